package cri

import (
	"bufio"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// upperDirs maps the mount point of each overlay mount of the mount table
// to its upper dir (a container rootfs's writable layer). A stats request
// reads the table once for all its containers: it holds a mount or more
// per pod, so a read per container made a request quadratic in the pods.
func upperDirs() map[string]string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	return parseUpperDirs(f)
}

func parseUpperDirs(mountinfo io.Reader) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "upperdir=") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 10 {
			continue
		}
		for _, o := range strings.Split(fields[len(fields)-1], ",") {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				out[fields[4]] = v
			}
		}
	}
	return out
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
