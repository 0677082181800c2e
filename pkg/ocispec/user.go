package ocispec

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// runc refuses ids above MaxInt32, and so does containerd.
const maxID = math.MaxInt32

// setUser sets process.user the way containerd's CRI does: the security
// context's user (RunAsUsername, else RunAsUser) and group (RunAsGroup), else
// the image's USER, resolved against the rootfs's /etc/passwd and /etc/group;
// then the additional groups: the primary group, the groups of /etc/group
// that list the user (unless the policy is Strict) and SupplementalGroups.
func setUser(in Input, s *specs.Spec) error {
	sc := in.Config.GetLinux().GetSecurityContext()
	userstr, err := userString(sc)
	if err != nil {
		return err
	}
	if userstr == "" {
		userstr = in.Image.User
	}
	root := in.RootfsHere
	if root == "" {
		root = in.Pod.RootfsPath
	}
	db := &userDB{fsys: in.RootFS, root: root}
	defer db.close()

	u, err := db.resolve(userstr)
	if err != nil {
		return err
	}
	gids := []uint32{u.gid}
	switch sc.GetSupplementalGroupsPolicy() {
	case runtimeapi.SupplementalGroupsPolicy_Merge:
		more, err := db.memberOf(u)
		if err != nil {
			return err
		}
		gids = append(gids, more...)
	case runtimeapi.SupplementalGroupsPolicy_Strict:
	default:
		return invalid("unknown supplemental groups policy %d", sc.GetSupplementalGroupsPolicy())
	}
	for _, g := range sc.GetSupplementalGroups() {
		if g < 0 || g > maxID {
			return invalid("supplemental group %d out of range", g)
		}
		gids = append(gids, uint32(g))
	}
	slices.Sort(gids)
	s.Process.User = specs.User{UID: u.uid, GID: u.gid, AdditionalGids: slices.Compact(gids)}
	return nil
}

// userString is containerd's user string of a security context: "user",
// "user:group", or "" when it names no user.
func userString(sc *runtimeapi.LinuxContainerSecurityContext) (string, error) {
	var user string
	if sc.GetRunAsUser() != nil {
		user = strconv.FormatInt(sc.GetRunAsUser().GetValue(), 10)
	}
	if sc.GetRunAsUsername() != "" {
		user = sc.GetRunAsUsername()
	}
	if sc.GetRunAsGroup() == nil {
		return user, nil
	}
	if user == "" {
		return "", invalid("run_as_group %d is given without run_as_user or run_as_username", sc.GetRunAsGroup().GetValue())
	}
	return user + ":" + strconv.FormatInt(sc.GetRunAsGroup().GetValue(), 10), nil
}

// user is a resolved user: ids and, when /etc/passwd knows it, its name.
type user struct {
	uid, gid uint32
	name     string
}

// userDB reads /etc/passwd and /etc/group of a rootfs, once, on first use.
type userDB struct {
	fsys   fs.FS
	root   string
	opened *os.Root

	passwd, group       [][]string
	passwdErr, groupErr error
	loaded              bool
}

func (db *userDB) close() {
	if db.opened != nil {
		_ = db.opened.Close()
	}
}

func (db *userDB) load() {
	if db.loaded {
		return
	}
	db.loaded = true
	if db.fsys == nil {
		r, err := os.OpenRoot(db.root)
		if err != nil {
			db.passwdErr, db.groupErr = err, err
			return
		}
		db.opened, db.fsys = r, r.FS()
	}
	db.passwd, db.passwdErr = readColonFile(db.fsys, "etc/passwd", 4)
	db.group, db.groupErr = readColonFile(db.fsys, "etc/group", 3)
}

// resolve turns a user string ("", "uid", "name", "uid:gid", "name:group",
// …) into ids. A uid that /etc/passwd does not know runs with gid 0 (or the
// gid given); a name it does not know is refused.
func (db *userDB) resolve(userstr string) (user, error) {
	if userstr == "" {
		userstr = "0"
	}
	userPart, groupPart, hasGroup := strings.Cut(userstr, ":")
	if strings.Contains(groupPart, ":") || userPart == "" || (hasGroup && groupPart == "") {
		return user{}, invalid("invalid user %q", userstr)
	}

	var u user
	if id, isNum, err := parseID(userPart); err != nil {
		return user{}, invalid("invalid user %q: uid %w", userstr, err)
	} else if isNum {
		u.uid = id
		if e, err := db.findUser(func(e []string) bool { return e[2] == userPart }); err == nil {
			u.name = e[0]
			if !hasGroup {
				u.gid = atoiID(e[3])
			}
		} else if !errors.Is(err, errNotFound) {
			return user{}, err
		}
	} else {
		e, err := db.findUser(func(e []string) bool { return e[0] == userPart })
		if errors.Is(err, errNotFound) {
			return user{}, invalid("user %q not found in the image's /etc/passwd", userPart)
		} else if err != nil {
			return user{}, err
		}
		u.name, u.uid, u.gid = e[0], atoiID(e[2]), atoiID(e[3])
	}
	if !hasGroup {
		return u, nil
	}

	if id, isNum, err := parseID(groupPart); err != nil {
		return user{}, invalid("invalid user %q: gid %w", userstr, err)
	} else if isNum {
		u.gid = id
		return u, nil
	}
	e, err := db.findGroup(func(e []string) bool { return e[0] == groupPart })
	if errors.Is(err, errNotFound) {
		return user{}, invalid("group %q not found in the image's /etc/group", groupPart)
	} else if err != nil {
		return user{}, err
	}
	u.gid = atoiID(e[2])
	return u, nil
}

// memberOf returns the gids of the groups that list u as a member, except
// a group named like the user (containerd's rule).
func (db *userDB) memberOf(u user) ([]uint32, error) {
	if u.name == "" {
		return nil, nil
	}
	db.load()
	if errors.Is(db.groupErr, fs.ErrNotExist) {
		return nil, nil
	} else if db.groupErr != nil {
		return nil, fmt.Errorf("read /etc/group: %w", db.groupErr)
	}
	var gids []uint32
	for _, e := range db.group {
		if e[0] == u.name || len(e) < 4 {
			continue
		}
		if slices.Contains(strings.Split(e[3], ","), u.name) {
			gids = append(gids, atoiID(e[2]))
		}
	}
	return gids, nil
}

var errNotFound = errors.New("not found")

func (db *userDB) findUser(match func([]string) bool) ([]string, error) {
	db.load()
	if errors.Is(db.passwdErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("no /etc/passwd in the image: %w", errNotFound)
	} else if db.passwdErr != nil {
		return nil, fmt.Errorf("read /etc/passwd: %w", db.passwdErr)
	}
	for _, e := range db.passwd {
		if match(e) {
			return e, nil
		}
	}
	return nil, errNotFound
}

func (db *userDB) findGroup(match func([]string) bool) ([]string, error) {
	db.load()
	if errors.Is(db.groupErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("no /etc/group in the image: %w", errNotFound)
	} else if db.groupErr != nil {
		return nil, fmt.Errorf("read /etc/group: %w", db.groupErr)
	}
	for _, e := range db.group {
		if match(e) {
			return e, nil
		}
	}
	return nil, errNotFound
}

// parseID parses a numeric uid or gid; isNum is false for a name.
func parseID(s string) (id uint32, isNum bool, err error) {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, true, errors.New("out of range")
		}
		return 0, false, nil
	}
	if v < 0 || v > maxID {
		return 0, true, errors.New("out of range")
	}
	return uint32(v), true, nil
}

// atoiID is the id of a validated passwd or group entry.
func atoiID(s string) uint32 {
	v, _ := strconv.ParseUint(s, 10, 32)
	return uint32(v)
}

// readColonFile reads a passwd(5) or group(5) file of fsys: the entries
// with at least minFields fields whose third field is an id runc accepts.
// Comments, blank lines and NIS lines ("+…", "-…") are skipped.
func readColonFile(fsys fs.FS, name string, minFields int) ([][]string, error) {
	resolved, err := resolveInFS(fsys, name)
	if err != nil {
		return nil, err
	}
	// Check the type before opening: opening a FIFO would wait for a
	// writer, reading a device could last forever. containerd refuses such
	// a file too.
	info, err := fs.Stat(fsys, resolved)
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, invalid("the image's /%s is not a regular file (%s)", name, info.Mode().Type())
	}
	f, err := fsys.Open(resolved)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	if info, err := f.Stat(); err != nil {
		return nil, err
	} else if !info.Mode().IsRegular() { // replaced since the first look
		return nil, invalid("the image's /%s is not a regular file (%s)", name, info.Mode().Type())
	}
	var entries [][]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		e := strings.Split(line, ":")
		if len(e) < minFields {
			continue
		}
		if minFields >= 4 {
			if _, isNum, err := parseID(e[3]); !isNum || err != nil {
				continue
			}
		}
		if _, isNum, err := parseID(e[2]); !isNum || err != nil {
			continue
		}
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return entries, nil
}

// resolveInFS follows the symbolic links of name inside fsys, taking
// absolute targets from the root of fsys rather than of the host (an image's
// /etc/passwd may well be a link). Without fs.ReadLinkFS it returns name.
func resolveInFS(fsys fs.FS, name string) (string, error) {
	rl, ok := fsys.(fs.ReadLinkFS)
	if !ok {
		return name, nil
	}
	const maxLinks = 40
	links := 0
	pending := splitPath(name)
	var done []string
	for len(pending) > 0 {
		part := pending[0]
		pending = pending[1:]
		switch part {
		case ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		done = append(done, part)
		cur := strings.Join(done, "/")
		info, err := rl.Lstat(cur)
		if err != nil {
			return "", err
		}
		if info.Mode()&fs.ModeSymlink == 0 {
			if !info.IsDir() && len(pending) > 0 {
				return "", &fs.PathError{Op: "resolve", Path: cur, Err: syscall.ENOTDIR}
			}
			continue
		}
		if links++; links > maxLinks {
			return "", &fs.PathError{Op: "resolve", Path: name, Err: syscall.ELOOP}
		}
		target, err := rl.ReadLink(cur)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			done = done[:0]
		} else {
			done = done[:len(done)-1]
		}
		pending = append(splitPath(target), pending...)
	}
	if len(done) == 0 {
		return ".", nil
	}
	return strings.Join(done, "/"), nil
}

func splitPath(p string) []string {
	return strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
}
