"""Signed checkpoints: the C2SP formats, the key file, strict parsing, and Go's sumdb/note reading ours unchanged."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imstore.checkpoint import Signer, Verifier, checkpoint_body, open_checkpoint, sign_note
from imstore.errors import CorruptStore, InvalidInput, ProofFailed

GO_MODULE = Path("/usr/share/gocode/src/golang.org/x/mod")  # Debian's golang-golang-x-mod-dev: builds offline
ROOT = hashlib.sha256(b"a root").digest()
SEED = bytes(range(32))
NAME = "imstore/0b7c2f0e-4c51-4bd5-9a3c-3f0e8e7d6a11"

GO_PROGRAM = """package main

import (
	"fmt"
	"os"

	"golang.org/x/mod/sumdb/note"
)

// Verify a signed note with a verifier key, both exactly as imstore wrote them; print the note's text.
func main() {
	msg, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "verifier key:", err)
		os.Exit(3)
	}
	if len(os.Args) > 3 { // also sign the text with imstore's private key file: Ed25519 is deterministic
		key, err := os.ReadFile(os.Args[3])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		signer, err := note.NewSigner(string(key[:len(key)-1]))
		if err != nil {
			fmt.Fprintln(os.Stderr, "signer key:", err)
			os.Exit(3)
		}
		n, err := note.Open(msg, note.VerifierList(verifier))
		if err != nil {
			fmt.Fprintln(os.Stderr, "open:", err)
			os.Exit(1)
		}
		signed, err := note.Sign(&note.Note{Text: n.Text}, signer)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sign:", err)
			os.Exit(1)
		}
		os.Stdout.Write(signed)
		return
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	fmt.Print(n.Text)
}
"""


@pytest.fixture(scope="module")
def go_checker(tmp_path_factory) -> Path:
    """A Go program built against golang.org/x/mod/sumdb/note (skips when Go or the module is not installed)."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go golang-golang-x-mod-dev): the Go interop check is skipped")
    if not (GO_MODULE / "sumdb" / "note" / "note.go").exists():
        pytest.skip(f"golang.org/x/mod is not at {GO_MODULE} (apt-get install golang-golang-x-mod-dev): the Go interop check is skipped")
    work = tmp_path_factory.mktemp("gocheck")
    (work / "main.go").write_text(GO_PROGRAM)
    module = f"module imstorecheck\n\ngo 1.19\n\nrequire golang.org/x/mod v0.7.0\n\nreplace golang.org/x/mod => {GO_MODULE}\n"
    (work / "go.mod").write_text(module)
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=mod", "GOCACHE": str(work / "cache"), "GOPATH": str(work / "gopath")}
    built = subprocess.run(["go", "build", "-o", "check", "."], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return work / "check"


@pytest.fixture
def signer(tmp_path) -> Signer:
    return Signer.load_or_create(tmp_path / "checkpoint.key", NAME)


def run_go(checker: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(checker), *map(str, args)], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- Go's note package reads ours unchanged
def test_go_sumdb_note_verifies_our_checkpoint_unchanged(go_checker, signer, tmp_path):
    body = checkpoint_body(NAME, 12345, ROOT)
    note_file = tmp_path / "checkpoint"
    note_file.write_bytes(sign_note(body, signer).encode("utf-8"))
    result = run_go(go_checker, note_file, signer.verifier)
    assert result.returncode == 0, result.stderr
    assert result.stdout == body


def test_go_signs_the_same_note_with_our_private_key_file(go_checker, signer, tmp_path):
    """Our key file is Go's private key format, and our signature is the one Go makes (Ed25519 is deterministic)."""
    note = sign_note(checkpoint_body(NAME, 7, ROOT), signer)
    note_file = tmp_path / "checkpoint"
    note_file.write_text(note)
    result = run_go(go_checker, note_file, signer.verifier, tmp_path / "checkpoint.key")
    assert result.returncode == 0, result.stderr
    assert result.stdout == note


def test_go_rejects_a_checkpoint_we_would_reject(go_checker, signer, tmp_path):
    note = sign_note(checkpoint_body(NAME, 12345, ROOT), signer).replace("12345", "12346")
    note_file = tmp_path / "checkpoint"
    note_file.write_text(note)
    assert run_go(go_checker, note_file, signer.verifier).returncode == 1
    with pytest.raises(ProofFailed):
        open_checkpoint(note, signer.verifier)


# ---------------------------------------------------------------- the formats, by hand from the C2SP text
def test_key_id_and_verifier_key_follow_the_signed_note_spec():
    signer = Signer(NAME, SEED)
    public = signer.verifier.public
    key_id = hashlib.sha256(NAME.encode() + b"\n\x01" + public).digest()[:4]
    encoded_key = base64.b64encode(b"\x01" + public).decode()
    assert str(signer.verifier) == f"{NAME}+{key_id.hex()}+{encoded_key}"
    note = sign_note(checkpoint_body(NAME, 3, ROOT), signer)
    text, signature_line = note.split("\n\n")
    assert text == f"{NAME}\n3\n{base64.b64encode(ROOT).decode()}"
    dash, name, encoded = signature_line.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", NAME)
    assert base64.b64decode(encoded)[:4] == key_id and len(base64.b64decode(encoded)) == 68
    assert open_checkpoint(note, Verifier.parse(str(signer.verifier))) == (NAME, 3, ROOT, note)


def test_every_single_byte_change_to_a_checkpoint_is_rejected(signer):
    note = sign_note(checkpoint_body(NAME, 1000, ROOT), signer).encode("utf-8")
    checked = 0
    for position in range(len(note)):
        for replacement in {note[position] ^ 0x01, note[position] ^ 0x20, ord("A")} - {note[position]}:
            changed = note[:position] + bytes([replacement]) + note[position + 1 :]
            try:
                text = changed.decode("utf-8")
            except UnicodeDecodeError:
                continue  # not text at all: nothing could even read it as a note
            with pytest.raises(ProofFailed):
                open_checkpoint(text, signer.verifier)
            checked += 1
    assert checked > 2 * len(note)


def test_a_checkpoint_signed_by_another_key_is_rejected(signer, tmp_path):
    other = Signer(NAME, bytes(32))
    with pytest.raises(ProofFailed, match="not signed by the key"):
        open_checkpoint(sign_note(checkpoint_body(NAME, 1, ROOT), other), signer.verifier)


def test_the_key_is_made_once_with_mode_0600_and_reused(tmp_path):
    first = Signer.load_or_create(tmp_path / "checkpoint.key", NAME)
    assert (tmp_path / "checkpoint.key").stat().st_mode & 0o777 == 0o600
    again = Signer.load_or_create(tmp_path / "checkpoint.key", NAME)
    assert str(again.verifier) == str(first.verifier)
    assert (tmp_path / "checkpoint.key").read_text().startswith(f"PRIVATE+KEY+{NAME}+")


def test_a_damaged_key_file_is_reported_not_replaced(tmp_path):
    (tmp_path / "checkpoint.key").write_text("PRIVATE+KEY+nonsense\n")
    with pytest.raises(CorruptStore, match="damaged"):
        Signer.load_or_create(tmp_path / "checkpoint.key", NAME)
    assert (tmp_path / "checkpoint.key").read_text() == "PRIVATE+KEY+nonsense\n"


WRONG_ID = f"{NAME}+00000000+" + base64.b64encode(b"\x01" + bytes(32)).decode()


@pytest.mark.parametrize("text", ["", "name+abcd", "name+00000000+AAAA", WRONG_ID])
def test_a_malformed_verifier_key_is_a_usage_error(text):
    with pytest.raises(InvalidInput):
        Verifier.parse(text)
