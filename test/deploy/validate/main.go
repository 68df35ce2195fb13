// Command k8s-validate checks Kubernetes manifests the way a kube-apiserver would on create:
// strict decoding (unknown or duplicate fields are errors), defaulting, conversion to the
// internal version, then the registry strategy of the object's kind (PrepareForCreate,
// Validate including declarative validation, object meta validation, warnings).
//
// It links the apiserver's own validation code of one Kubernetes release (see go.mod), so
// no cluster, network or downloaded schema is needed.
//
// Usage: k8s-validate FILE... ("-" reads standard input). Multi-document YAML is accepted.
// Prints one line per object; exits 1 when any object is invalid, 2 on a usage or read error.
//
// k8s-validate --to-json FILE... prints the documents as one JSON array instead, so tests
// written in other languages can read rendered manifests without a YAML library.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	_ "k8s.io/kubernetes/pkg/apis/apps/install"
	api "k8s.io/kubernetes/pkg/apis/core"
	_ "k8s.io/kubernetes/pkg/apis/core/install"
	_ "k8s.io/kubernetes/pkg/apis/policy/install"
	_ "k8s.io/kubernetes/pkg/apis/rbac/install"
	_ "k8s.io/kubernetes/pkg/apis/scheduling/install"
	_ "k8s.io/kubernetes/pkg/apis/storage/install"
	"k8s.io/kubernetes/pkg/capabilities"
	"k8s.io/kubernetes/pkg/registry/apps/daemonset"
	"k8s.io/kubernetes/pkg/registry/apps/deployment"
	"k8s.io/kubernetes/pkg/registry/apps/statefulset"
	"k8s.io/kubernetes/pkg/registry/core/configmap"
	"k8s.io/kubernetes/pkg/registry/core/namespace"
	"k8s.io/kubernetes/pkg/registry/core/persistentvolume"
	"k8s.io/kubernetes/pkg/registry/core/persistentvolumeclaim"
	"k8s.io/kubernetes/pkg/registry/core/service"
	"k8s.io/kubernetes/pkg/registry/core/serviceaccount"
	"k8s.io/kubernetes/pkg/registry/policy/poddisruptionbudget"
	"k8s.io/kubernetes/pkg/registry/rbac/clusterrole"
	"k8s.io/kubernetes/pkg/registry/rbac/clusterrolebinding"
	"k8s.io/kubernetes/pkg/registry/rbac/role"
	"k8s.io/kubernetes/pkg/registry/rbac/rolebinding"
	"k8s.io/kubernetes/pkg/registry/scheduling/priorityclass"
	"k8s.io/kubernetes/pkg/registry/storage/csidriver"
	"k8s.io/kubernetes/pkg/registry/storage/storageclass"
	"k8s.io/kubernetes/pkg/registry/storage/volumeattributesclass"
	"sigs.k8s.io/yaml"
)

// strategies holds the kinds this project ships; any other kind is reported as unsupported
// rather than passed unchecked.
var strategies = map[schema.GroupKind]rest.RESTCreateStrategy{
	{Group: "apps", Kind: "Deployment"}:                              deployment.Strategy,
	{Group: "apps", Kind: "DaemonSet"}:                               daemonset.Strategy,
	{Group: "apps", Kind: "StatefulSet"}:                             statefulset.Strategy,
	{Group: "", Kind: "ConfigMap"}:                                   configmap.Strategy,
	{Group: "", Kind: "Namespace"}:                                   namespace.Strategy,
	{Group: "", Kind: "PersistentVolume"}:                            persistentvolume.Strategy,
	{Group: "", Kind: "PersistentVolumeClaim"}:                       persistentvolumeclaim.Strategy,
	{Group: "", Kind: "Service"}:                                     service.Strategy,
	{Group: "", Kind: "ServiceAccount"}:                              serviceaccount.Strategy,
	{Group: "policy", Kind: "PodDisruptionBudget"}:                   poddisruptionbudget.Strategy,
	{Group: "rbac.authorization.k8s.io", Kind: "ClusterRole"}:        clusterrole.Strategy,
	{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"}: clusterrolebinding.Strategy,
	{Group: "rbac.authorization.k8s.io", Kind: "Role"}:               role.Strategy,
	{Group: "rbac.authorization.k8s.io", Kind: "RoleBinding"}:        rolebinding.Strategy,
	{Group: "scheduling.k8s.io", Kind: "PriorityClass"}:              priorityclass.Strategy,
	{Group: "storage.k8s.io", Kind: "CSIDriver"}:                     csidriver.Strategy,
	{Group: "storage.k8s.io", Kind: "StorageClass"}:                  storageclass.Strategy,
	{Group: "storage.k8s.io", Kind: "VolumeAttributesClass"}:         volumeattributesclass.Strategy,
}

var strictDecoder = serializer.NewCodecFactory(legacyscheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

type warnings []string

func (w *warnings) AddWarning(_, text string) { *w = append(*w, text) }

// validate runs one decoded document through the create path and returns its identity,
// warnings and the first error.
func validate(doc []byte) (string, []string, error) {
	obj, gvk, err := strictDecoder.Decode(doc, nil, nil)
	id := "?"
	if gvk != nil {
		id = gvk.GroupVersion().String() + " " + gvk.Kind
	}
	if obj != nil {
		if m, merr := meta.Accessor(obj); merr == nil {
			id += " " + qualifiedName(m)
		}
	}
	if err != nil {
		return id, nil, err
	}
	strategy, ok := strategies[gvk.GroupKind()]
	if !ok {
		return id, nil, fmt.Errorf("kind %s is not known to this validator: add its registry strategy", gvk.GroupKind())
	}

	legacyscheme.Scheme.Default(obj)
	internal, err := legacyscheme.Scheme.ConvertToVersion(obj, schema.GroupVersion{Group: gvk.Group, Version: runtime.APIVersionInternal})
	if err != nil {
		return id, nil, fmt.Errorf("convert: %w", err)
	}
	objMeta, err := meta.Accessor(internal)
	if err != nil {
		return id, nil, err
	}
	rest.FillObjectMetaSystemFields(objMeta)

	namespace := metav1.NamespaceNone
	if strategy.NamespaceScoped() {
		namespace = objMeta.GetNamespace()
		if namespace == "" {
			namespace = metav1.NamespaceDefault // what kubectl apply would send to
		}
	}
	if svc, ok := internal.(*api.Service); ok {
		allocateClusterIP(svc)
	}

	var recorded warnings
	ctx := genericapirequest.WithNamespace(context.Background(), namespace)
	ctx = genericapirequest.WithRequestInfo(ctx, &genericapirequest.RequestInfo{
		IsResourceRequest: true, Verb: "create", APIGroup: gvk.Group, APIVersion: gvk.Version, Namespace: namespace,
	})
	ctx = warning.WithWarningRecorder(ctx, &recorded)
	if err := rest.BeforeCreate(strategy, ctx, internal); err != nil {
		return id, recorded, err
	}
	return id, recorded, nil
}

// allocateClusterIP does what the Service storage's allocator does before validation, for a
// single-stack IPv4 cluster: the strategy alone expects the addresses to be filled in.
func allocateClusterIP(svc *api.Service) {
	if svc.Spec.Type == api.ServiceTypeExternalName {
		return
	}
	if svc.Spec.ClusterIP == "" {
		svc.Spec.ClusterIP = "10.96.0.10"
	}
	if len(svc.Spec.ClusterIPs) == 0 {
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
	}
	if svc.Spec.IPFamilyPolicy == nil {
		policy := api.IPFamilyPolicySingleStack
		svc.Spec.IPFamilyPolicy = &policy
	}
	if len(svc.Spec.IPFamilies) == 0 {
		svc.Spec.IPFamilies = []api.IPFamily{api.IPv4Protocol}
	}
}

func qualifiedName(m metav1.Object) string {
	if m.GetNamespace() != "" {
		return m.GetNamespace() + "/" + m.GetName()
	}
	return m.GetName()
}

// documents splits multi-document YAML and drops documents that hold only comments.
func documents(r io.Reader) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if hasContent(doc) {
			docs = append(docs, doc)
		}
	}
}

func hasContent(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		trimmed := strings.TrimSpace(string(line))
		if trimmed != "" && !strings.HasPrefix(trimmed, "#") && trimmed != "---" {
			return true
		}
	}
	return false
}

func readDocuments(name string) [][]byte {
	var in io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	}
	docs, err := documents(in)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	return docs
}

func printJSON(names []string) {
	out := []byte("[")
	for _, name := range names {
		for _, doc := range readDocuments(name) {
			j, err := yaml.YAMLToJSONStrict(doc)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
				os.Exit(2)
			}
			if len(out) > 1 {
				out = append(out, ',')
			}
			out = append(out, j...)
		}
	}
	os.Stdout.Write(append(out, ']', '\n'))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: k8s-validate [--to-json] FILE... (- for standard input)")
		os.Exit(2)
	}
	if os.Args[1] == "--version" {
		fmt.Println("k8s-validate", kubernetesVersion)
		return
	}
	if os.Args[1] == "--to-json" {
		printJSON(os.Args[2:])
		return
	}
	// Like kube-apiserver --allow-privileged=true, which kubeadm, EKS and most distributions set:
	// CSI node plugins need privileged containers.
	capabilities.Setup(true, 0)

	invalid := 0
	for _, name := range os.Args[1:] {
		docs := readDocuments(name)
		for _, doc := range docs {
			id, warns, err := validate(doc)
			for _, w := range warns {
				fmt.Printf("WARNING %s: %s: %s\n", name, id, w)
			}
			if err != nil {
				invalid++
				fmt.Printf("INVALID %s: %s: %v\n", name, id, err)
				continue
			}
			fmt.Printf("OK %s: %s\n", name, id)
		}
	}
	if invalid > 0 {
		os.Exit(1)
	}
}
