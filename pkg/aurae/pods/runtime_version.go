package pods

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// PinnedRuntime is where `make deps` installs the pinned runc
// (hack/runc/build.sh). DefaultRuntime takes it when it exists.
const PinnedRuntime = "/opt/aurae/bin/runc"

// MinRuntimeVersion is the oldest runc auraed starts with: older ones lack
// idmapped mounts and the 2025 fixes of CVE-2025-31133, CVE-2025-52565 and
// CVE-2025-52881 (Debian 12 ships 1.1.5).
var MinRuntimeVersion = RuntimeVersion{Major: 1, Minor: 3}

// DefaultRuntime is the OCI runtime used when none is configured: the pinned
// runc when installed, else "runc" on PATH.
func DefaultRuntime() string {
	if fi, err := os.Stat(PinnedRuntime); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return PinnedRuntime
	}
	return "runc"
}

// RuntimeVersion is an OCI runtime's version: the numbers of its first
// "<name> version X.Y.Z[-suffix]" line.
type RuntimeVersion struct {
	Name                string // "runc", "crun"
	Major, Minor, Patch int
	Suffix              string // "-rc.1", "+ds1", …
}

func (v RuntimeVersion) String() string {
	return fmt.Sprintf("%d.%d.%d%s", v.Major, v.Minor, v.Patch, v.Suffix)
}

// Less orders by number; a pre-release ("-rc.1") comes before its release,
// build metadata ("+ds1") does not count.
func (v RuntimeVersion) Less(o RuntimeVersion) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor < o.Minor
	}
	if v.Patch != o.Patch {
		return v.Patch < o.Patch
	}
	return strings.HasPrefix(v.Suffix, "-") && !strings.HasPrefix(o.Suffix, "-")
}

// ParseRuntimeVersion reads the output of `<runtime> --version`, e.g.
//
//	runc version 1.4.4
//	commit: v1.4.4
//	spec: 1.3.0
func ParseRuntimeVersion(out string) (RuntimeVersion, error) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != "version" {
			continue
		}
		v, err := parseSemver(f[2])
		if err != nil {
			return RuntimeVersion{}, fmt.Errorf("%q: %w", strings.TrimSpace(line), err)
		}
		v.Name = f[0]
		return v, nil
	}
	return RuntimeVersion{}, fmt.Errorf("no \"<name> version X.Y.Z\" line in %q", firstLine(out))
}

func parseSemver(s string) (RuntimeVersion, error) {
	var v RuntimeVersion
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexAny(s, "-+~"); i >= 0 {
		s, v.Suffix = s[:i], s[i:]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, errors.New("not a X.Y[.Z] version")
	}
	nums := []*int{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return v, fmt.Errorf("not a X.Y[.Z] version: %q", p)
		}
		*nums[i] = n
	}
	return v, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// RuntimeCheck is what CheckRuntime found.
type RuntimeCheck struct {
	Path    string
	Version RuntimeVersion
	Raw     string // first line of --version
	// Spec is the runtime-spec version the runtime reads (its "spec:"
	// line: "1.3.0" for runc 1.4, "1.0.0" for Debian 12's crun 1.8.1);
	// "" when it does not say.
	Spec string
}

// ParseRuntimeSpecVersion is the runtime-spec version of the "spec: X.Y.Z"
// line of `<runtime> --version` ("" when there is none or it is not a
// version).
func ParseRuntimeSpecVersion(out string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != "spec:" {
			continue
		}
		if _, err := parseSemver(f[1]); err != nil {
			return ""
		}
		return f[1]
	}
	return ""
}

// CheckRuntime runs `<path> --version` and refuses a runtime older than
// MinRuntimeVersion (a version it cannot read counts as older) unless
// allowOld. The check is returned in every case where --version ran, so
// that the caller can log it.
func CheckRuntime(ctx context.Context, path string, allowOld bool) (RuntimeCheck, error) {
	rc := RuntimeCheck{Path: path}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	rc.Raw = firstLine(string(out))
	if err != nil {
		return rc, fmt.Errorf("OCI runtime %s --version: %w: %s: %w", path, err, rc.Raw, errdefs.ErrFailedPrecondition)
	}
	v, perr := ParseRuntimeVersion(string(out))
	rc.Version = v
	rc.Spec = ParseRuntimeSpecVersion(string(out))
	switch {
	case allowOld:
		return rc, nil
	case perr != nil:
		return rc, fmt.Errorf("OCI runtime %s: version unreadable (%w); it must be %s or newer (make deps installs %s), or give --allow-old-oci-runtime: %w",
			path, perr, MinRuntimeVersion, PinnedRuntime, errdefs.ErrFailedPrecondition)
	case v.Less(MinRuntimeVersion):
		return rc, fmt.Errorf("OCI runtime %s is %s %s, older than %s (it lacks idmapped mounts and the 2025 security fixes); make deps installs a current runc at %s, or give --allow-old-oci-runtime: %w",
			path, v.Name, v, MinRuntimeVersion, PinnedRuntime, errdefs.ErrFailedPrecondition)
	}
	return rc, nil
}

// checkRuntime checks the runtime and logs what it found in one line; it
// answers the runtime-spec version the runtime reads and its name.
func checkRuntime(ctx context.Context, log *slog.Logger, path string, allowOld bool) (spec, name string, _ error) {
	rc, err := CheckRuntime(ctx, path, allowOld)
	if err != nil {
		return "", "", err
	}
	attrs := []any{"path", rc.Path, "name", rc.Version.Name, "version", rc.Version.String(), "spec", rc.Spec, "min_version", MinRuntimeVersion.String()}
	if rc.Version.Less(MinRuntimeVersion) {
		log.WarnContext(ctx, "OCI runtime older than supported, allowed by --allow-old-oci-runtime", append(attrs, "version_line", rc.Raw)...)
		return rc.Spec, rc.Version.Name, nil
	}
	log.InfoContext(ctx, "OCI runtime", attrs...)
	return rc.Spec, rc.Version.Name, nil
}
