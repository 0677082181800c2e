package hypervisor

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// memfdLink starts the link of a memfd in /proc/<pid>/fd: QEMU names the
// guest RAM's "memory-backend-memfd".
const memfdLink = "/memfd:"

// punchChunk is how much of the RAM is read at once.
const punchChunk = 2 << 20

// punchZeroPages gives back the guest RAM pages of QEMU pid that hold
// only zeros. QEMU's incoming migration reads every page the stream
// says is zero to check it (and a read of a memfd's hole allocates a
// page), so a clone would otherwise hold all of its RAM: the template's
// free pages (reported free and discarded in the template) are zero
// pages of the stream. Called while the guest is paused, before it runs;
// the holes read as zeros again, as the pages did.
func punchZeroPages(pid int, size int64) (freed int64, _ error) {
	f, err := openRAM(pid, size)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	page := os.Getpagesize()
	zero := make([]byte, page)
	buf := make([]byte, punchChunk)
	var runStart, runLen int64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, runStart, runLen)
		freed += runLen
		runLen = 0
		return err
	}
	for off := int64(0); off < size; off += punchChunk {
		n, err := f.ReadAt(buf, off)
		if n == 0 && err != nil {
			return freed, fmt.Errorf("read guest ram: %w", err)
		}
		for i := 0; i+page <= n; i += page {
			if bytes.Equal(buf[i:i+page], zero) {
				if runLen == 0 {
					runStart = off + int64(i)
				}
				runLen += int64(page)
				continue
			}
			if err := flush(); err != nil {
				return freed, fmt.Errorf("punch guest ram: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return freed, fmt.Errorf("punch guest ram: %w", err)
	}
	return freed, nil
}

// openRAM opens QEMU pid's guest RAM: its memfd of that size.
func openRAM(pid int, size int64) (*os.File, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, memfdLink) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, e.Name()), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err == nil && fi.Size() == size {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("qemu pid %d has no memfd of %d bytes (its RAM)", pid, size)
}
