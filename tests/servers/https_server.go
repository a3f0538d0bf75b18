// An HTTPS server on Go's net/http and crypto/tls, HTTP/1.1 only (HTTP/2
// is not read yet):
//
//	GET  /items/{id}  200, a small JSON
//	GET  /big         200, 200 KiB written in 20 flushed chunks
//	POST /echo        201, once the whole body is read
//	anything else     404
//
// Usage: https_server PORT CERT KEY; prints "listening" when ready.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"id\": %q}\n", strings.TrimPrefix(r.URL.Path, "/items/"))
	})
	chunk := []byte(strings.Repeat("x", 10*1024))
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 20; i++ {
			w.Write(chunk)
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, n)
	})
	mux.HandleFunc("/", http.NotFound)
	listener, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	server := &http.Server{
		Handler:      mux,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	fmt.Println("listening")
	panic(server.ServeTLS(listener, os.Args[2], os.Args[3]))
}
