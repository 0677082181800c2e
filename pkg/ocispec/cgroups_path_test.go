package ocispec

import "testing"

// Under the systemd driver the pod's facts name its slice, and a container's
// linux.cgroupsPath is runc's "slice:prefix:name" form.
func TestCgroupsPathSystemd(t *testing.T) {
	in := testInput()
	in.Pod.CgroupParent = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/kubepods-burstable-pod1-aurae_pod1.slice"
	in.Pod.SystemdSlice = "kubepods-burstable-pod1-aurae_pod1.slice"
	s := mustGenerate(t, in)
	if want := "kubepods-burstable-pod1-aurae_pod1.slice:aurae:ctr1"; s.Linux.CgroupsPath != want {
		t.Errorf("cgroupsPath %q, want %q", s.Linux.CgroupsPath, want)
	}
}
