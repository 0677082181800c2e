package fanout

import "testing"

func TestHub(t *testing.T) {
	var h Hub[int]
	a, cancelA := h.Subscribe(2)
	b, _ := h.Subscribe(1)
	h.Publish(1)
	h.Publish(2) // b has no room: dropped
	if v := <-a; v != 1 {
		t.Fatalf("a got %d", v)
	}
	if v := <-a; v != 2 {
		t.Fatalf("a got %d", v)
	}
	if v, ok := <-b; !ok || v != 1 {
		t.Fatalf("b got %d %v", v, ok)
	}
	if _, ok := <-b; ok {
		t.Fatal("a full subscriber was not dropped")
	}
	cancelA()
	cancelA() // twice is fine
	if _, ok := <-a; ok {
		t.Fatal("a cancelled subscription stays open")
	}
	c, _ := h.Subscribe(1)
	h.DropAll()
	if _, ok := <-c; ok {
		t.Fatal("DropAll left a subscription open")
	}
	h.Publish(3) // nobody: nothing blocks
}
