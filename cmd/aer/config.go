package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

// defaultAddress is auraed's socket when neither --address nor a config
// names one.
const defaultAddress = "unix:///run/aurae/aurae.sock"

// clientConfig is Aurae's client config (~/.aurae/config,
// /etc/aurae/config):
//
//	[auth]
//	ca_crt = "~/.aurae/pki/ca.crt"
//	client_crt = "~/.aurae/pki/_signed.client.nova.crt"
//	client_key = "~/.aurae/pki/client.nova.key"
//
//	[system]
//	socket = "/var/run/aurae/aurae.sock"   # or "tcp://host:port", "host:port"
//
// The certificates serve TCP addresses (mutual TLS); a unix socket is
// reached without TLS (auraed serves it to root alone).
type clientConfig struct {
	Auth struct {
		CACrt     string `toml:"ca_crt"`
		ClientCrt string `toml:"client_crt"`
		ClientKey string `toml:"client_key"`
	} `toml:"auth"`
	System struct {
		Socket string `toml:"socket"`
	} `toml:"system"`
}

// defaultConfigs are read in order; the first that exists is used.
func defaultConfigs() []string {
	var out []string
	if home, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(home, ".aurae", "config"))
	}
	return append(out, "/etc/aurae/config")
}

// loadConfig reads path, or the first default config that exists; no
// config at all is an empty one.
func loadConfig(path string) (clientConfig, error) {
	var cfg clientConfig
	paths, explicit := []string{path}, path != ""
	if !explicit {
		paths = defaultConfigs()
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			continue
		}
		if err != nil {
			return cfg, fmt.Errorf("client config: %w", err)
		}
		dec := toml.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("client config %s: %w", p, err)
		}
		for _, f := range []*string{&cfg.Auth.CACrt, &cfg.Auth.ClientCrt, &cfg.Auth.ClientKey} {
			*f = expandHome(*f)
		}
		return cfg, nil
	}
	return cfg, nil
}

func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	return p
}

// normalizeAddress turns a config's socket or --address into a client
// address: a path is a unix socket, host:port is TCP.
func normalizeAddress(s string) string {
	switch {
	case strings.HasPrefix(s, "unix://"), strings.HasPrefix(s, "tcp://"):
		return s
	case strings.HasPrefix(s, "/"):
		return "unix://" + s
	default:
		return "tcp://" + s
	}
}

// dialTarget is the address to call and the client options: --address
// over the config's socket over the default; TLS from the config's [auth]
// for TCP.
func (a *app) dialTarget() (string, []client.Option, error) {
	cfg, err := loadConfig(a.config)
	if err != nil {
		return "", nil, err
	}
	address := defaultAddress
	if cfg.System.Socket != "" {
		address = normalizeAddress(cfg.System.Socket)
	}
	if a.address != "" {
		address = normalizeAddress(a.address)
	}
	if !strings.HasPrefix(address, "tcp://") {
		return address, nil, nil
	}
	au := cfg.Auth
	if au.CACrt == "" || au.ClientCrt == "" || au.ClientKey == "" {
		return "", nil, usagef("%s is TCP, which auraed serves only with mutual TLS: give ca_crt, client_crt and client_key in the [auth] section of the client config", address)
	}
	return address, []client.Option{client.WithTLS(au.ClientCrt, au.ClientKey, au.CACrt)}, nil
}
