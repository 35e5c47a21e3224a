// Package nspawn boots a throwaway container under a real systemd with
// systemd-nspawn, from the host's own read-only /usr and an empty volatile
// root, so that tests can install a unit, drive it with systemctl and read
// the journal; it always removes the container and its cgroups.
//
// The flags follow what a unit under nspawn needs on these machines (see
// shared/notes/systemd-under-nspawn.md): -D / --volatile=yes -b,
// --register=no --keep-unit, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 (so that
// DeviceAllow= is enforced), --system-call-filter=bpf (so that systemd can
// attach its device filter), CAP_NET_ADMIN in the container (a private
// network namespace, or an existing one with the capability granted), a
// private cgroup per container under each cgroup hierarchy, and
// systemd-firstboot.service masked. A preset file disables every unit the
// host's packages would otherwise enable on the container's first boot, so
// that what runs inside does not depend on what is installed. Everything
// needs root; [Available] says why a container cannot be booted.
package nspawn
