// Package csidial connects the sidecar stand-ins to a CSI driver's socket.
package csidial

import (
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial returns a lazy client for a unix socket path (or a unix: address). gRPC's default
// reconnect backoff grows to two minutes; a driver that starts late or restarts should be seen
// within a second.
func Dial(address string) (*grpc.ClientConn, error) {
	target := address
	switch {
	case strings.HasPrefix(address, "unix:"):
	case filepath.IsAbs(address):
		target = "unix://" + address
	default:
		target = "unix:" + address
	}
	return grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
}
