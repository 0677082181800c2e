package linux

import "testing"

func TestValidCPUList(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "0-3": true, "0-3,6": true, "1,3,5-7": true, "8191": true,
		"": false, "3-1": false, "0,0": false, "2,1": false, "0-3,2": false, "a": false, "+1": false,
		"-1": false, "0-": false, ",": false, "8192": false, "0 ,1": false, "1-2-3": false,
	} {
		if got := ValidCPUList(s); got != want {
			t.Errorf("ValidCPUList(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestValidPageSize(t *testing.T) {
	for s, want := range map[string]bool{
		"2MB": true, "1GB": true, "64KB": true,
		"": false, "MB": false, "0MB": false, "02MB": false, "2M": false, "2mb": false, "-2MB": false, "2MB/..": false,
	} {
		if got := ValidPageSize(s); got != want {
			t.Errorf("ValidPageSize(%q) = %v, want %v", s, got, want)
		}
	}
}
