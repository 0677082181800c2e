package cri

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// upperDir is the writable layer of a container's overlay rootfs, read from
// the mount table ("" when the rootfs is not an overlay).
func (r *Runtime) upperDir(containerID string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	target := r.rootfsDir(containerID)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[4] != target {
			continue
		}
		for _, o := range strings.Split(fields[len(fields)-1], ",") {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				return v
			}
		}
	}
	return ""
}

// dirUsage is the bytes of the regular files under dir.
func dirUsage(dir string) uint64 {
	if dir == "" {
		return 0
	}
	var n uint64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += uint64(fi.Size())
			}
		}
		return nil
	})
	return n
}
