package critest_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// spec is one spec of a ginkgo JSON report.
type spec struct {
	ContainerHierarchyTexts []string
	LeafNodeText            string
	LeafNodeType            string
	State                   string
	Failure                 *struct {
		Message string
	}
}

func (s spec) name() string {
	return strings.Join(append(append([]string{}, s.ContainerHierarchyTexts...), s.LeafNodeText), " ")
}

// results are the specs of a run by outcome.
type results struct {
	passed, failed, skipped []string
	messages                map[string]string // failed spec → first line of its failure
}

// readReport reads a ginkgo --json-report: an array of suite reports.
func readReport(file string) (results, error) {
	r := results{messages: map[string]string{}}
	b, err := os.ReadFile(file)
	if err != nil {
		return r, err
	}
	var suites []struct {
		SpecReports []spec
	}
	if err := json.Unmarshal(b, &suites); err != nil {
		return r, fmt.Errorf("%s: %w", file, err)
	}
	for _, su := range suites {
		for _, s := range su.SpecReports {
			if s.LeafNodeType != "It" {
				continue
			}
			switch s.State {
			case "passed":
				r.passed = append(r.passed, s.name())
			case "skipped", "pending":
				r.skipped = append(r.skipped, s.name())
			default: // failed, panicked, timedout, interrupted, aborted
				r.failed = append(r.failed, s.name())
				if s.Failure != nil {
					msg, _, _ := strings.Cut(strings.TrimSpace(s.Failure.Message), "\n")
					r.messages[s.name()] = s.State + ": " + msg
				}
			}
		}
	}
	sort.Strings(r.passed)
	sort.Strings(r.failed)
	sort.Strings(r.skipped)
	return r, nil
}

// readKnownFailures reads known-failures.txt: one spec name a line, its
// reason after " # "; blank lines and lines starting with '#' are ignored.
func readKnownFailures(file string) (map[string]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	known := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, reason, ok := strings.Cut(line, " # ")
		if !ok || strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: no reason (\"<spec name> # <reason>\")", file, n)
		}
		known[strings.TrimSpace(name)] = strings.TrimSpace(reason)
	}
	return known, sc.Err()
}
