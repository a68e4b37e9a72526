package inbox

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// benchBody is the sendToDevice body of the small fan-out load: an
// Olm-encrypted content of ≈ 0.5 KiB for each of four devices of two
// users, each distinct, as a client sends it.
func benchBody() []byte {
	var b bytes.Buffer
	b.WriteString(`{"messages":{`)
	for u := range 2 {
		if u > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"@user%d:localhost":{`, u)
		for d := range 2 {
			i := 2*u + d
			if d > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"D%d":{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"%s","ciphertext":{"%s":{"type":0,"body":"%s+/%s"}}}`,
				i, strings.Repeat("S", 43), strings.Repeat(string(rune('0'+i)), 43), strings.Repeat(string(rune('a'+i)), 300), strings.Repeat("Z", 98))
		}
		b.WriteByte('}')
	}
	b.WriteString(`}}`)
	return b.Bytes()
}

// BenchmarkDecodeSendBody is the validation and decoding of that body.
//
//	go test -run XXX -bench 'DecodeSendBody|BuildAccept' -benchmem ./internal/inbox/
func BenchmarkDecodeSendBody(b *testing.B) {
	body := benchBody()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeSendBody(body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildAccept is the accept built from its messages, all local.
func BenchmarkBuildAccept(b *testing.B) {
	msgs, err := DecodeSendBody(benchBody())
	if err != nil {
		b.Fatal(err)
	}
	txn := TxnKey{UserID: "@alice:localhost", DeviceID: "A1", EventType: "m.room.encrypted", TxnID: "txn1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BuildAccept("localhost", txn, msgs); err != nil {
			b.Fatal(err)
		}
	}
}
