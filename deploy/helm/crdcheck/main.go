// Command crdcheck validates the custom resources that the openpi-triton chart renders (Prometheus
// Operator's PodMonitor and ServiceMonitor, KEDA's ScaledObject), which the Kubernetes schemas do not cover:
// each YAML document is decoded strictly into its project's own Go API types, so an unknown field or a
// value of the wrong type fails. Documents of any other kind are an error too.
//
//	crdcheck FILE...   (or YAML on stdin); exit 0 when every document decodes, 1 otherwise.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// newObject returns an empty object of the Go type for apiVersion/kind, or nil when there is none.
func newObject(meta typeMeta) any {
	switch meta {
	case typeMeta{"monitoring.coreos.com/v1", "PodMonitor"}:
		return &monitoringv1.PodMonitor{}
	case typeMeta{"monitoring.coreos.com/v1", "ServiceMonitor"}:
		return &monitoringv1.ServiceMonitor{}
	case typeMeta{"keda.sh/v1alpha1", "ScaledObject"}:
		return &kedav1alpha1.ScaledObject{}
	}
	return nil
}

func checkDocument(doc []byte) (string, error) {
	var meta typeMeta
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return "", fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if meta.Kind == "" {
		return "", nil // an empty document between separators
	}
	name := meta.APIVersion + " " + meta.Kind
	object := newObject(meta)
	if object == nil {
		return name, errors.New("no Go API type known for this kind")
	}
	if err := yaml.UnmarshalStrict(doc, object); err != nil {
		return name, err
	}
	return name, nil
}

func checkStream(label string, input io.Reader) int {
	failures := 0
	reader := k8syaml.NewYAMLReader(bufio.NewReader(input))
	for index := 0; ; index++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return failures
		}
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", label, err)
			return failures + 1
		}
		name, err := checkDocument(bytes.TrimSpace(doc))
		switch {
		case err != nil:
			fmt.Printf("FAIL %s document %d (%s): %v\n", label, index, name, err)
			failures++
		case name != "":
			fmt.Printf("ok   %s document %d (%s)\n", label, index, name)
		}
	}
}

func main() {
	failures := 0
	if len(os.Args) == 1 {
		failures += checkStream("stdin", os.Stdin)
	}
	for _, path := range os.Args[1:] {
		file, err := os.Open(path)
		if err != nil {
			fmt.Printf("FAIL %v\n", err)
			failures++
			continue
		}
		failures += checkStream(path, file)
		file.Close()
	}
	if failures > 0 {
		os.Exit(1)
	}
}
