package netcni

import (
	"encoding/json"
	"errors"
	"net"

	gocni "github.com/containerd/go-cni"
	cnilibrary "github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
)

// teardownMasq removes the masquerade rules the bridge plugin (ipMasq: true)
// installed for podID, using the IPs of the ADD result libcni cached. The
// bridge plugin's own DEL learns the IPs from the pod's interface, so it
// leaves the rules behind when the network namespace is already gone.
func (m *Manager) teardownMasq(c gocni.CNI, podID string) error {
	cc := cnilibrary.NewCNIConfig(m.binDirs, nil)
	var errs []error
	for _, n := range c.GetConfig().Networks {
		if n.IFName == "lo" || !hasBridgeMasq(n.Config.Plugins) {
			continue
		}
		list, err := cnilibrary.ConfListFromBytes([]byte(n.Config.Source))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cached, err := cc.GetNetworkListCachedResult(list, &cnilibrary.RuntimeConf{
			ContainerID: podID,
			IfName:      n.IFName,
		})
		if err != nil || cached == nil {
			continue // never set up, or already torn down
		}
		res, err := types100.NewResultFromResult(cached)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var ipns []*net.IPNet
		for _, ipc := range res.IPs {
			ipns = append(ipns, &ipc.Address)
		}
		if err := ip.TeardownIPMasqForNetworks(ipns, list.Name, n.IFName, podID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func hasBridgeMasq(plugins []*gocni.NetworkConf) bool {
	for _, p := range plugins {
		if p.Network == nil || p.Network.Type != "bridge" {
			continue
		}
		var c struct {
			IPMasq bool `json:"ipMasq"`
		}
		if json.Unmarshal([]byte(p.Source), &c) == nil && c.IPMasq {
			return true
		}
	}
	return false
}
