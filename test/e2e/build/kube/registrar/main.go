// Command registrar stands in for node-driver-registrar, which the Go module proxy does not serve
// (its go.mod declares a module path that differs from its import path). It speaks kubelet's
// plugin-registration API as the real sidecar does for a CSI driver: it serves
// Registration.GetInfo on a socket in kubelet's plugins_registry directory, naming the driver and
// the driver's CSI socket as kubelet sees it, and logs what kubelet reports back.
//
// It runs in one of two modes:
//
//   - sidecar mode (--kubelet-registration-path set): the real sidecar's flags and behaviour, so
//     the Helm chart runs it unchanged as registry.k8s.io/sig-storage/csi-node-driver-registrar.
//     It asks the driver at --csi-address for its name, serves <plugin-registration-path>/<name>-reg.sock,
//     and optionally /healthz on --http-endpoint.
//   - legacy mode (--driver and --registration-socket set): used by test/e2e/deploy.ts. Here
//     --csi-address is the driver socket as kubelet sees it and the driver is never contacted.
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
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"aws-storage-csi/test/e2e/build/kube/internal/csidial"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const probeMode = "kubelet-registration-probe"

var supportedVersions = []string{"1.0.0"}

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driver   string
	endpoint string
	// probeFile is touched on GetInfo, as the real sidecar does for --mode=kubelet-registration-probe.
	probeFile string

	mu        sync.Mutex
	lastError string // kubelet's last refusal; cleared when it later registers us
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("kubelet asked for plugin info: %s at %s", r.driver, r.endpoint)
	if r.probeFile != "" {
		if err := touch(r.probeFile); err != nil {
			log.Printf("could not create registration probe file %s (only --mode=kubelet-registration-probe reads it): %v", r.probeFile, err)
		}
	}
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driver,
		Endpoint:          r.endpoint,
		SupportedVersions: supportedVersions,
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, status *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if status.PluginRegistered {
		log.Printf("kubelet registered %s", r.driver)
		r.lastError = ""
	} else {
		log.Printf("kubelet refused %s: %s", r.driver, status.Error)
		r.lastError = status.Error
		if r.lastError == "" {
			r.lastError = "no reason given"
		}
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func (r *registrar) refusal() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastError
}

func main() {
	// Legacy flags (deploy.ts).
	driver := flag.String("driver", "", "legacy mode: CSI driver name, e.g. ebs.csi.aws.com")
	legacySocket := flag.String("registration-socket", "", "legacy mode: where kubelet looks: <kubelet-dir>/plugins_registry/<driver>-reg.sock")
	// node-driver-registrar flags.
	csiAddress := flag.String("csi-address", "/run/csi/socket", "path of the CSI driver socket as this process sees it (legacy mode: as kubelet sees it)")
	kubeletPath := flag.String("kubelet-registration-path", "", "path of the CSI driver socket on the host, as kubelet sees it")
	pluginDir := flag.String("plugin-registration-path", "/registration", "kubelet's plugin registration directory as this process sees it")
	httpEndpoint := flag.String("http-endpoint", "", "TCP address for the /healthz server; empty disables it")
	healthPort := flag.Int("health-port", 0, "(deprecated) TCP port for /healthz; 0 disables it")
	timeout := flag.Duration("timeout", time.Second, "timeout of calls to the CSI driver")
	connTimeout := flag.Duration("connection-timeout", 0, "(deprecated) ignored")
	mode := flag.String("mode", "registration", `"registration", or "kubelet-registration-probe" to check that kubelet registered the driver`)
	flag.Bool("enable-pprof", false, "accepted for compatibility; ignored")
	verbosity := flag.Int("v", 0, "log verbosity; accepted for compatibility")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Println(os.Args[0], "stand-in")
		return
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if *kubeletPath == "" {
		if set["driver"] || set["registration-socket"] {
			runLegacy(*driver, *csiAddress, set["csi-address"], *legacySocket)
			return
		}
		log.Fatal("--kubelet-registration-path is required")
	}
	if set["driver"] || set["registration-socket"] {
		log.Fatal("--driver and --registration-socket belong to legacy mode; do not mix them with --kubelet-registration-path")
	}

	// Same place the real sidecar uses: next to the driver socket on the host.
	probeFile := filepath.Join(filepath.Dir(*kubeletPath), "registration")
	if *mode == probeMode {
		if _, err := os.Stat(probeFile); err != nil {
			log.Fatalf("kubelet plugin registration has not succeeded yet: %v", err)
		}
		log.Printf("kubelet plugin registration succeeded")
		return
	}

	if *healthPort > 0 && *httpEndpoint != "" {
		log.Fatal("only one of --health-port and --http-endpoint can be set")
	}
	addr := *httpEndpoint
	if *healthPort > 0 {
		addr = ":" + strconv.Itoa(*healthPort)
	}
	if *connTimeout != 0 {
		log.Printf("--connection-timeout is deprecated and has no effect")
	}
	log.Printf("node-driver-registrar stand-in: mode=%s csi-address=%s kubelet-registration-path=%s v=%d",
		*mode, *csiAddress, *kubeletPath, *verbosity)

	// Handle signals before waiting for the driver, so a pod deleted meanwhile still exits 0.
	var cleanupMu sync.Mutex
	var cleanup func()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-stop
		log.Printf("received %v; exiting", sig)
		cleanupMu.Lock()
		if cleanup != nil {
			cleanup()
		}
		os.Exit(0)
	}()

	name, err := driverName(*csiAddress, *timeout)
	if err != nil {
		log.Fatalf("error retrieving CSI driver name: %v", err)
	}
	log.Printf("CSI driver name: %q", name)

	r := &registrar{driver: name, endpoint: *kubeletPath, probeFile: probeFile}
	socket := filepath.Join(*pluginDir, name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("removing stale %s: %v", socket, err)
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, r)
	// Hold the lock until cleanup is set, so a signal cannot leave the socket behind.
	cleanupMu.Lock()
	cleanup = func() {
		server.Stop()
		if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
			log.Fatalf("removing %s: %v", socket, err)
		}
		log.Printf("removed %s", socket)
	}
	// Owner-only socket, like the real sidecar.
	oldMask := syscall.Umask(0o077)
	listener, err := net.Listen("unix", socket)
	syscall.Umask(oldMask)
	cleanupMu.Unlock()
	if err != nil {
		log.Fatalf("listening on %s: %v", socket, err)
	}

	if addr != "" {
		go serveHealth(addr, socket, r)
	} else {
		log.Printf("no --http-endpoint; skipping HTTP server")
	}

	log.Printf("serving plugin registration for %s on %s", name, socket)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("serving: %v", err)
	}
	// Serve returns nil only after Stop; the signal goroutine exits the process.
	select {}
}

// runLegacy is the original behaviour that deploy.ts relies on; keep it unchanged.
func runLegacy(driver, endpoint string, endpointSet bool, socket string) {
	if driver == "" || !endpointSet || endpoint == "" || socket == "" {
		log.Fatal("--driver, --csi-address and --registration-socket are required")
	}
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("removing stale %s: %v", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listening on %s: %v", socket, err)
	}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, &registrar{driver: driver, endpoint: endpoint})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		server.Stop()
		_ = os.Remove(socket)
	}()
	log.Printf("serving plugin registration for %s on %s", driver, socket)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("serving: %v", err)
	}
}

// driverName waits for the driver socket to answer, as the real sidecar does, then asks its name.
// Only "cannot connect" is retried; any other failure ends the process so the pod restarts it.
func driverName(address string, timeout time.Duration) (string, error) {
	conn, err := csidial.Dial(address)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	identity := csi.NewIdentityClient(conn)
	started := time.Now()
	lastLog := time.Time{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		info, err := identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			if info.GetName() == "" {
				return "", errors.New("driver name is empty")
			}
			return info.GetName(), nil
		}
		if status.Code(err) != codes.Unavailable {
			return "", err
		}
		if time.Since(lastLog) >= 10*time.Second {
			log.Printf("still connecting to %s after %s: %v", address, time.Since(started).Round(time.Second), err)
			lastLog = time.Now()
		}
		time.Sleep(time.Second)
	}
}

// serveHealth answers /healthz: healthy while our registration socket exists and kubelet has not
// refused the registration. (The real sidecar exits on a refusal instead; a failing probe gets the
// container restarted all the same, and the reason stays visible.)
func serveHealth(addr, socket string, r *registrar) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, req *http.Request) {
		if err := checkHealth(socket, r); err != nil {
			log.Printf("health check failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	log.Printf("serving /healthz on %s", addr)
	log.Fatalf("HTTP server on %s: %v", addr, http.ListenAndServe(addr, mux))
}

func checkHealth(socket string, r *registrar) error {
	fi, err := os.Stat(socket)
	if os.IsNotExist(err) {
		return errors.New("registration socket does not exist")
	}
	if err != nil {
		return fmt.Errorf("checking registration socket: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a socket", socket)
	}
	if reason := r.refusal(); reason != "" {
		return fmt.Errorf("kubelet refused the registration: %s", reason)
	}
	return nil
}

func touch(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}
