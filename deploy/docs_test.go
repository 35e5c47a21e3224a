package deploy_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readmeCitation is a pointer to a README section: `README.md, "Heading"`,
// `README, "Heading"` or `deploy/README.md, "Heading"`, in prose or in a
// comment that may wrap between the words of the heading.
var readmeCitation = regexp.MustCompile(`((?:deploy/)?README(?:\.md)?),\s+"([^"]+)"`)

// TestREADMECitationsExist: every file that sends its reader to a README
// section names one that exists (three cited "Running it on a gateway"
// after the heading had become "Running it on a WireGuard gateway").
func TestREADMECitationsExist(t *testing.T) {
	headings := map[string][]string{}
	for _, readme := range []string{"README.md", "deploy/README.md"} {
		for _, line := range strings.Split(string(readFile(t, readme)), "\n") {
			if h, ok := strings.CutPrefix(line, "## "); ok {
				headings[readme] = append(headings[readme], h)
			} else if h, ok := strings.CutPrefix(line, "### "); ok {
				headings[readme] = append(headings[readme], h)
			}
		}
	}
	// Continuation lines of a comment lose their marker, so that a heading
	// wrapped over two comment lines reads as one.
	marker := regexp.MustCompile(`\n\s*(#|//)?\s*`)
	cited := 0
	for _, dir := range []string{"deploy", "configs", "cmd", "README.md", "Makefile"} {
		err := filepath.WalkDir(filepath.Join(root(t), dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasSuffix(path, "_test.go") {
				return err
			}
			info, err := d.Info()
			if err != nil || info.Size() > 1<<20 {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			text := marker.ReplaceAllString(string(b), " ")
			for _, m := range readmeCitation.FindAllStringSubmatch(text, -1) {
				readme := "README.md"
				if strings.HasPrefix(m[1], "deploy/") {
					readme = "deploy/README.md"
				}
				rel, _ := filepath.Rel(root(t), path)
				cited++
				found := false
				for _, h := range headings[readme] {
					found = found || h == m[2]
				}
				if !found {
					t.Errorf("%s cites %s, %q: no such heading there", rel, readme, m[2])
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if cited < 4 {
		t.Errorf("found %d citations of README sections, want the 4 or more the deploy files make", cited)
	}
}
