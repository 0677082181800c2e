// Package durable writes small files that must survive a crash of the
// machine: written, fsynced, and where replaced, renamed into place.
package durable

import (
	"errors"
	"os"
)

// WriteFile opens path with os.O_WRONLY|flag (e.g. os.O_CREATE|os.O_EXCL)
// and perm, writes b and fsyncs it before closing it.
func WriteFile(path string, b []byte, flag int, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|flag, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// ReplaceFile writes b to path+".tmp" (WriteFile, truncated) and renames it
// over path: a crash leaves the old content or the new, never a part.
func ReplaceFile(path string, b []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := WriteFile(tmp, b, os.O_CREATE|os.O_TRUNC, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SyncDir fsyncs a directory, so that the names made, renamed or removed
// in it last.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
