package cri

import (
	"strings"
	"testing"
)

func TestParseUpperDirs(t *testing.T) {
	mountinfo := `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
310 22 0:52 / /var/lib/aurae-cri/containers/c1/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/1/fs:/s/2/fs,upperdir=/s/3/fs,workdir=/s/3/work
311 22 0:53 / /var/lib/aurae-cri/containers/c2/rootfs ro,relatime - overlay overlay ro,lowerdir=/s/1/fs
312 22 0:4 net:[4026532] /run/netns/p1 rw shared:5 - nsfs nsfs rw
`
	got := parseUpperDirs(strings.NewReader(mountinfo))
	if len(got) != 1 || got["/var/lib/aurae-cri/containers/c1/rootfs"] != "/s/3/fs" {
		t.Fatalf("upper dirs %v", got)
	}
}
