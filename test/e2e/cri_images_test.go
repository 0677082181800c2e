package e2e

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

func TestCRIImages(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	ref := c.pushBusybox(t, "e2e/app:1", testimage.Options{User: "app"})
	numeric := c.pushBusybox(t, "e2e/num:1", testimage.Options{User: "1234"})

	st, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: ref}, true)
	if err != nil {
		t.Fatal(err)
	}
	img := st.GetImage()
	if img.GetId() == "" || img.GetSize() == 0 || len(img.GetRepoTags()) != 1 || len(img.GetRepoDigests()) != 1 || img.GetUsername() != "app" || st.GetInfo()["info"] == "" {
		t.Fatalf("image status %v", st)
	}
	nst, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: numeric}, false)
	if err != nil || nst.GetImage().GetUid().GetValue() != 1234 {
		t.Fatalf("numeric user: %v %v", nst, err)
	}
	list, err := c.Images.ListImages(ctx, &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil || len(list) != 1 || list[0].GetId() != img.GetId() {
		t.Fatalf("filtered list: %v %v", list, err)
	}
	all, err := c.Images.ListImages(ctx, nil)
	if err != nil || len(all) != 2 {
		t.Fatalf("list: %v %v", all, err)
	}
	fs, err := c.Images.ImageFsInfo(ctx)
	if err != nil || len(fs.GetImageFilesystems()) == 0 || fs.GetImageFilesystems()[0].GetUsedBytes().GetValue() == 0 {
		t.Fatalf("image fs info: %v %v", fs, err)
	}
	if err := c.Images.RemoveImage(ctx, &runtimeapi.ImageSpec{Image: img.GetId()}); err != nil {
		t.Fatal(err)
	}
	gone, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: ref}, false)
	if err != nil || gone.GetImage() != nil {
		t.Fatalf("removed image still there: %v %v", gone, err)
	}
	if err := c.Images.RemoveImage(ctx, &runtimeapi.ImageSpec{Image: ref}); err != nil {
		t.Fatalf("removing an unknown image: %v", err)
	}
	if _, err := c.Images.PullImage(ctx, &runtimeapi.ImageSpec{Image: c.Registry.Ref("e2e/missing:1")}, nil, nil); status.Code(err) != codes.NotFound {
		t.Fatalf("pulling a missing image: %v", err)
	}
	if _, err := c.Images.PullImage(ctx, &runtimeapi.ImageSpec{Image: "Not A Ref"}, nil, nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("pulling an invalid ref: %v", err)
	}
}
