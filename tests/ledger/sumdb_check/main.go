// An independent check of qledger's checkpoints and proofs with the Go packages of
// golang.org/x/mod/sumdb: note (C2SP signed notes) and tlog (RFC 6962/9162 Merkle proofs).
// It reads one JSON request on stdin and writes one JSON verdict on stdout.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type record struct {
	Index int64    `json:"index"` // leaf index: ledger position - 1
	Size  int64    `json:"size"`  // the tree the proof is in
	Root  string   `json:"root"`  // base64 root of that tree
	Data  string   `json:"data"`  // base64 of the leaf's bytes (the entry's envelope)
	Proof []string `json:"proof"` // base64 hashes
}

type consistency struct {
	Old     int64    `json:"old"`
	OldRoot string   `json:"old_root"`
	New     int64    `json:"new"`
	NewRoot string   `json:"new_root"`
	Proof   []string `json:"proof"`
}

type request struct {
	VerifierKey string        `json:"verifier_key"`
	Note        string        `json:"note"`
	Records     []record      `json:"records"`
	Consistency []consistency `json:"consistency"`
}

type verdict struct {
	NoteError   string   `json:"note_error"`
	Origin      string   `json:"origin"`
	Size        int64    `json:"size"`
	Root        string   `json:"root"`
	Records     []string `json:"records"`     // "" for a proof that checks, else the error
	Consistency []string `json:"consistency"` // likewise
}

func hash(text string) (tlog.Hash, error) {
	var h tlog.Hash
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(raw) != len(h) {
		return h, fmt.Errorf("bad hash %q", text)
	}
	copy(h[:], raw)
	return h, nil
}

func hashes(texts []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(texts))
	for i, t := range texts {
		h, err := hash(t)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var out verdict
	if verifier, err := note.NewVerifier(req.VerifierKey); err != nil {
		out.NoteError = "verifier key: " + err.Error()
	} else if opened, err := note.Open([]byte(req.Note), note.VerifierList(verifier)); err != nil {
		out.NoteError = err.Error()
	} else {
		// C2SP tlog-checkpoint: origin, tree size, base64 root hash, then optional extension lines.
		lines := strings.Split(opened.Text, "\n")
		if len(lines) < 4 {
			out.NoteError = "checkpoint body too short"
		} else {
			out.Origin = lines[0]
			out.Size, err = strconv.ParseInt(lines[1], 10, 64)
			out.NoteError = errorText(err)
			out.Root = lines[2]
		}
	}
	for _, r := range req.Records {
		out.Records = append(out.Records, errorText(func() error {
			data, err := base64.StdEncoding.DecodeString(r.Data)
			if err != nil {
				return err
			}
			root, err := hash(r.Root)
			if err != nil {
				return err
			}
			proof, err := hashes(r.Proof)
			if err != nil {
				return err
			}
			return tlog.CheckRecord(proof, r.Size, root, r.Index, tlog.RecordHash(data))
		}()))
	}
	for _, c := range req.Consistency {
		out.Consistency = append(out.Consistency, errorText(func() error {
			oldRoot, err := hash(c.OldRoot)
			if err != nil {
				return err
			}
			newRoot, err := hash(c.NewRoot)
			if err != nil {
				return err
			}
			proof, err := hashes(c.Proof)
			if err != nil {
				return err
			}
			return tlog.CheckTree(proof, c.New, newRoot, c.Old, oldRoot)
		}()))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
}
