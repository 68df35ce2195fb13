// Command livenessprobe stands in for the kubernetes-csi livenessprobe sidecar, which the Go module
// proxy does not serve. It takes the same flags and serves the same /healthz: each request calls the
// driver's CSI Identity/Probe and answers 200 "ok" only if the driver says it is ready.
//
// Unlike the real sidecar it serves HTTP at once instead of waiting for the driver first, so
// /healthz simply fails while the driver is not up yet.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"aws-storage-csi/test/e2e/build/kube/internal/csidial"
)

const defaultHealthPort = "9808"

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "address of the CSI driver socket")
	probeTimeout := flag.Duration("probe-timeout", time.Second, "timeout of one Probe call")
	httpEndpoint := flag.String("http-endpoint", "", "TCP address for /healthz; if empty, --health-port is used")
	healthPort := flag.String("health-port", defaultHealthPort, "(deprecated) TCP port for /healthz when --http-endpoint is empty")
	metricsAddress := flag.String("metrics-address", "", "(deprecated) accepted for compatibility; no metrics are served")
	flag.String("metrics-path", "/metrics", "accepted for compatibility; no metrics are served")
	connTimeout := flag.Duration("connection-timeout", 0, "(deprecated) ignored")
	verbosity := flag.Int("v", 0, "log verbosity; accepted for compatibility")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Println(os.Args[0], "stand-in")
		return
	}
	// Same conflicts the real sidecar rejects.
	if *healthPort != defaultHealthPort && *httpEndpoint != "" {
		log.Fatal("only one of --health-port and --http-endpoint can be explicitly set")
	}
	if *metricsAddress != "" && *httpEndpoint != "" {
		log.Fatal("only one of --metrics-address and --http-endpoint can be explicitly set")
	}
	if *connTimeout != 0 {
		log.Printf("--connection-timeout is deprecated and has no effect")
	}
	addr := *httpEndpoint
	if addr == "" {
		addr = ":" + *healthPort
	}
	log.Printf("livenessprobe stand-in: csi-address=%s probe-timeout=%s v=%d", *csiAddress, *probeTimeout, *verbosity)

	go logDriverName(*csiAddress)

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, req *http.Request) {
		if err := probe(req.Context(), *csiAddress, *probeTimeout); err != nil {
			log.Printf("health check failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	server := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	listener, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("listening on %s: %v", addr, err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-stop
		log.Printf("received %v; exiting", sig)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	log.Printf("serving /healthz on %s", addr)
	if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("HTTP server on %s: %v", addr, err)
	}
}

// probe opens a fresh connection per request, as the real sidecar does, so a restarted driver is
// seen at once rather than after a reconnect backoff.
func probe(ctx context.Context, address string, timeout time.Duration) error {
	conn, err := csidial.Dial(address)
	if err != nil {
		return fmt.Errorf("connecting to CSI driver: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return fmt.Errorf("probe failed: %w", err)
	}
	// An unset ready field means ready, per the CSI spec.
	if ready := resp.GetReady(); ready != nil && !ready.GetValue() {
		return errors.New("driver responded but is not ready")
	}
	return nil
}

// logDriverName logs the driver's name once it answers; it is informational only.
func logDriverName(address string) {
	conn, err := csidial.Dial(address)
	if err != nil {
		log.Printf("connecting to CSI driver: %v", err)
		return
	}
	defer conn.Close()
	identity := csi.NewIdentityClient(conn)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			log.Printf("CSI driver name: %q", info.GetName())
			return
		}
		time.Sleep(time.Second)
	}
}
