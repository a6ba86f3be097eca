// Command jsonhints writes what the .proto files cannot say about Kubernetes' JSON: which
// fields the Go structs embed (encoding/json inlines them), which scalars, slices and maps they
// print even when zero or nil (no `omitempty`), and which structs they drop when zero
// (`omitzero`); and about their protobuf: which scalars and structs are Go pointers, the only
// ones gogo-protobuf leaves out when unset (it writes every other one, zero or not). It walks
// every type the apiserver stores, by reflection, and prints one line per exceptional field:
//
//	<proto message full name>.<proto field name> <inline|always|omitzero|pointer>
//
// Run by ../update-k8s-protos.sh, which writes the output to ../k8s.io/json-hints.txt.
package main

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/scheme"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	aggregator "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/scheme"
)

func main() {
	seen := map[reflect.Type]bool{}
	var lines []string
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] || t.PkgPath() == "" {
			return
		}
		seen[t] = true
		message := strings.NewReplacer("/", ".", "-", "_").Replace(t.PkgPath()) + "." + t.Name()
		for i := 0; i < t.NumField(); i++ {
			field := t.Field(i)
			visit(field.Type)
			protoName := tagOption(field.Tag.Get("protobuf"), "name=")
			if protoName == "" {
				continue
			}
			jsonName, options, _ := strings.Cut(field.Tag.Get("json"), ",")
			hint := ""
			switch {
			case jsonName == "" && field.Anonymous:
				hint = "inline"
			case hasOption(options, "omitzero"):
				hint = "omitzero"
			case !hasOption(options, "omitempty") && printsZero(field.Type):
				hint = "always"
			}
			if hint != "" {
				lines = append(lines, fmt.Sprintf("%s.%s %s", message, protoName, hint))
			}
			if field.Type.Kind() == reflect.Pointer {
				lines = append(lines, fmt.Sprintf("%s.%s pointer", message, protoName))
			}
		}
	}
	for _, s := range []*runtime.Scheme{scheme.Scheme, apiextensions.Scheme, aggregator.Scheme} {
		for _, t := range s.AllKnownTypes() {
			visit(t)
		}
	}
	sort.Strings(lines)
	for _, line := range lines {
		fmt.Println(line)
	}
}

// printsZero: without omitempty, encoding/json prints zero scalars and nil slices and maps
// (`null`); structs are printed either way.
func printsZero(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.String, reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64,
		reflect.Slice, reflect.Map:
		return true
	}
	return false
}

func tagOption(tag, prefix string) string {
	for _, part := range strings.Split(tag, ",") {
		if strings.HasPrefix(part, prefix) {
			return strings.TrimPrefix(part, prefix)
		}
	}
	return ""
}

func hasOption(options, option string) bool {
	for _, part := range strings.Split(options, ",") {
		if part == option {
			return true
		}
	}
	return false
}
