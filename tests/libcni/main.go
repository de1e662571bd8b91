// libcni-add runs one ADD of a conflist through the real libcni (the
// reference runtime library, github.com/containernetworking/cni) and prints
// the result as libcni itself reads it back from its cache, parsed into its
// own 1.x types: {"cniVersion", "routes", "cached"}. Used by the root test
// tests/tests/result_routes.rs; built by it with the Go toolchain and libcni
// sources scripts/setup.sh unpacks from Debian's archive.
//
// usage: libcni-add CONFLIST CONTAINER_ID NETNS IFNAME CACHE_DIR CNI_PATH
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "libcni-add: %s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 7 {
		fmt.Fprintln(os.Stderr, "usage: libcni-add CONFLIST CONTAINER_ID NETNS IFNAME CACHE_DIR CNI_PATH")
		os.Exit(2)
	}
	a := os.Args[1:]
	list, err := libcni.ConfListFromFile(a[0])
	if err != nil {
		fail("conflist", err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(a[5]), a[4], nil)
	rt := &libcni.RuntimeConf{ContainerID: a[1], NetNS: a[2], IfName: a[3]}
	added, err := cni.AddNetworkList(context.Background(), list, rt)
	if err != nil {
		fail("AddNetworkList", err)
	}
	res, err := types100.GetResult(added)
	if err != nil {
		fail("result", err)
	}
	cachedRes, err := cni.GetNetworkListCachedResult(list, rt)
	if err != nil || cachedRes == nil {
		fail("cached result", err)
	}
	cached, err := types100.GetResult(cachedRes)
	if err != nil {
		fail("cached result", err)
	}
	out := map[string]interface{}{
		"cniVersion": res.CNIVersion,
		"routes":     res.Routes,
		"cached":     cached,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("print", err)
	}
}
