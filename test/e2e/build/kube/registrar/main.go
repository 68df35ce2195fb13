// Command registrar stands in for node-driver-registrar, which the Go module proxy does not serve
// (its go.mod declares a module path that differs from its import path). It speaks kubelet's
// plugin-registration API exactly as the real sidecar does for a CSI driver: it serves
// Registration.GetInfo on a socket in kubelet's plugins_registry directory, naming the driver and
// the driver's own CSI socket, and logs what kubelet reports back. It never talks to the driver.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driver   string
	endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("kubelet asked for plugin info: %s at %s", r.driver, r.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driver,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, status *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if status.PluginRegistered {
		log.Printf("kubelet registered %s", r.driver)
	} else {
		log.Printf("kubelet refused %s: %s", r.driver, status.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	driver := flag.String("driver", "", "CSI driver name, e.g. ebs.csi.aws.com")
	endpoint := flag.String("csi-address", "", "the driver's CSI socket path, as kubelet sees it")
	socket := flag.String("registration-socket", "", "where kubelet looks: <kubelet-dir>/plugins_registry/<driver>-reg.sock")
	flag.Parse()
	if *driver == "" || *endpoint == "" || *socket == "" {
		log.Fatal("--driver, --csi-address and --registration-socket are required")
	}
	if err := os.Remove(*socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("removing stale %s: %v", *socket, err)
	}
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatalf("listening on %s: %v", *socket, err)
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, &registrar{driver: *driver, endpoint: *endpoint})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		server.Stop()
		_ = os.Remove(*socket)
	}()
	log.Printf("serving plugin registration for %s on %s", *driver, *socket)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("serving: %v", err)
	}
}
