"""`c8ysim diag`: no secret in the bundle, whatever form it is written in; the bundle never
written through a planted link or over a file; a hostile state directory only listed.

The property test writes a random secret into a config in the forms the redaction once
missed (any case, typos, block scalars, multi-line plain scalars, `? key`, flow mappings,
quoted keys, anchors), also into a file YAML cannot parse (the rules on the text alone must
hold), and asserts the secret is nowhere in the bundle, journal lines included.
~300 examples by default; 10 000 with HYPOTHESIS_PROFILE=fuzz (`make fuzz`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import conftest  # the real agent's config (its own write_config and free_port are below)
from c8ysim import diag
from fuzzing import fuzz_settings

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-Zq8vX"
ENTRY_POINT = Path(sys.executable).with_name("c8ysim")
C8YSIM = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "c8ysim"]

FUZZ = fuzz_settings(examples_in_make_test=300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, cumulocity_extra: str = "", state: Path | None = None,
                 tail: str = "") -> Path:
    state = state or tmp_path / "state"
    state.mkdir(exist_ok=True)
    path = tmp_path / "c8ysim.yaml"
    path.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin}\n"
        "cumulocity:\n  host: 127.0.0.1\n  port: 1\n  tenant: t1\n  user: u\n"
        f"{cumulocity_extra}"
        f"storage: {{path: '{state}'}}\n"
        f"status: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "devices:\n  - {name: pv-roof, type: pv, interval_s: 1}\n" + tail)
    path.chmod(0o600)
    return path


def run_diag(config: Path, output: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*C8YSIM, "diag", "--config", str(config), "-o", str(output)],
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=120)


def bundle(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()
                for m in tar.getmembers() if m.isfile()}


# -- the forms the redaction missed (regressions) ----------------------------------------

MISSED_FORMS = {
    "capitalised key": f"  Password: {SECRET}\n",
    "upper case": f"  PASSWORD: '{SECRET}'\n",
    "typo pasword": f"  pasword: {SECRET}\n",
    "passwd": f"  passwd: \"{SECRET}\"\n",
    "pwd": f"  pwd: {SECRET}\n",
    "token": f"  api_token: {SECRET}\n",
    "literal block": f"  password: |\n    {SECRET}\n    second-{SECRET}\n",
    "folded block": f"  password: >-\n    {SECRET}\n\n    {SECRET}\n",
    "multi-line plain": f"  password: first\n    {SECRET}\n",
    "complex key": f"  ? password\n  : {SECRET}\n",
    "quoted complex key": f"  ? \"Password\"\n  : {SECRET}\n",
    "escaped key": f"  \"pass\\x77ord\": {SECRET}\n",
    "flow, no blank": f"  extra: {{\"secret\":\"{SECRET}\"}}\n",
    "anchor": f"  tenant2: &pw {SECRET}\n  password: *pw\n",
}


@pytest.mark.parametrize("name", list(MISSED_FORMS))
def test_redact_catches_the_missed_forms(name):
    text = "cumulocity:\n  host: h\n" + MISSED_FORMS[name] + "  port: 1\n"
    redacted = diag.redact(text)
    assert SECRET not in redacted, redacted
    assert "  host: h\n" in redacted and redacted.endswith("  port: 1\n")
    assert redacted.count("\n") == text.count("\n")  # lines kept: check-config's numbers fit


@pytest.mark.parametrize("name", [n for n in MISSED_FORMS if n not in (
    "escaped key", "anchor")])  # these two need the parsed YAML
def test_the_rules_on_the_text_alone_catch_them_too(name):
    text = "cumulocity:\n  host: h\n" + MISSED_FORMS[name] + "  port: [1\n"  # not YAML
    assert SECRET not in diag.redact(text)


# -- the property: a random secret, in a random form, never in the bundle -----------------

secret_text = st.text(alphabet="abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789",
                      min_size=10, max_size=24)
SECRET_KEYS = ["password", "Password", "PASSWORD", "pasword", "passwd", "passsword",
               "pwd", "secret", "client_secret", "token", "api_token", "api_key", "apikey"]


@st.composite
def secret_entries(draw, secret: str) -> tuple[str, str]:
    """One secret-holding entry at indentation 2 (inside `cumulocity:`), in some form, and
    the value YAML reads from it (what a log line could have echoed)."""
    key = draw(st.sampled_from(SECRET_KEYS))
    key = draw(st.sampled_from([key, f'"{key}"', f"'{key}'"]))
    other = draw(secret_text)
    form = draw(st.sampled_from([
        "plain", "single", "double", "literal", "folded", "literal-strip", "folded-keep",
        "multiline-plain", "complex", "flow", "flow-tight", "commented", "anchor",
        "nested", "list"]))
    event(form)
    entry, value = {
        "plain": (f"  {key}: {secret}\n", secret),
        "single": (f"  {key}: '{secret} {other}'\n", f"{secret} {other}"),
        "double": (f"  {key}: \"{secret}\\t{other}\"\n", f"{secret}\t{other}"),
        "literal": (f"  {key}: |\n    {other}\n    {secret}\n", f"{other}\n{secret}\n"),
        "folded": (f"  {key}: >\n    {secret}\n\n    {other}\n", f"{secret}\n{other}\n"),
        "literal-strip": (f"  {key}: |-  # a comment\n      {secret}\n", secret),
        "folded-keep": (f"  {key}: >+\n    {secret}\n\n", f"{secret}\n\n"),
        "multiline-plain": (f"  {key}: {other}\n    {secret}\n    {other}\n",
                            f"{other} {secret} {other}"),
        "complex": (f"  ? {key}\n  : {secret}\n", secret),
        "flow": (f"  extra: {{a: 1, {key}: {secret}, b: 2}}\n", secret),
        "flow-tight": (f"  extra: {{\"a\":1,\"{key.strip(chr(34) + chr(39))}\":\"{secret}\"}}\n",
                       secret),
        "commented": (f"  # {key}: {secret}\n", secret),
        "anchor": (f"  extra: &x {secret}\n  {key}: *x\n", secret),
        "nested": (f"  {key}:\n    value: {secret}\n    more: [{other}]\n", secret),
        "list": (f"  {key}:\n    - {secret}\n    - {other}\n", secret),
    }[form]
    return entry, value


@st.composite
def configs_with_a_secret(draw) -> tuple[str, str]:
    secret = draw(secret_text)
    entry, value = draw(secret_entries(secret))
    where = draw(st.sampled_from(["cumulocity", "top", "device"]))
    if where == "top":
        entry = "extras:\n" + entry
    elif where == "device":
        entry = "  - name: pv2\n    type: pv\n" + "".join(
            "  " + line + "\n" for line in entry.splitlines())
    broken = draw(st.booleans())  # YAML that cannot be parsed: the text rules alone
    event("not YAML" if broken else "YAML")
    return secret, value, entry + ("broken: [unclosed\n" if broken else ""), where


def _collect_bundle(config: Path, journal: str) -> dict[str, str]:
    with mock.patch.object(diag, "_journal", lambda summary: journal), \
            mock.patch.object(diag, "_status_page", lambda cfg, summary: None), \
            mock.patch.object(diag, "versions", lambda: {}):
        files, summary = diag.collect(str(config))
    output = config.with_name("bundle.tar.gz")
    diag.write_bundle(output, "c8ysim-diag-test", files, summary)
    return bundle(output)


@FUZZ
@given(configs_with_a_secret())
def test_no_secret_in_the_bundle_whatever_its_form(case):
    secret, value, entry, where = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if where == "cumulocity":
            config = write_config(tmp_path, cumulocity_extra=entry)
        else:
            config = write_config(tmp_path, tail=entry)
        # the value as a log line once echoed it (escaped) and as it was
        escaped = value.encode("unicode_escape").decode()
        journal = f"<3>supervisor: echoed {escaped}\n<3>supervisor: raw {value}\n"
        files = _collect_bundle(config, journal)
    leaks = [name for name, text in files.items() if secret in text]
    assert not leaks, (leaks, files.get("config.yaml"))
    assert "config.yaml" in files


# -- the bundle file: never through a link, never over a file -----------------------------

def test_diag_refuses_a_planted_symlink_and_leaves_its_target_alone(tmp_path):
    config = write_config(tmp_path, f"  password: {SECRET}\n")
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "bundle.tar.gz"
    link.symlink_to(target)
    result = run_diag(config, link)
    assert result.returncode == 1, result.stderr
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert target.read_text() == "precious\n" and link.is_symlink()


def test_diag_refuses_a_dangling_symlink(tmp_path):
    config = write_config(tmp_path, f"  password: {SECRET}\n")
    link = tmp_path / "bundle.tar.gz"
    link.symlink_to(tmp_path / "would-be-created")
    assert run_diag(config, link).returncode == 1
    assert not (tmp_path / "would-be-created").exists()


def test_diag_never_overwrites_an_existing_file(tmp_path):
    config = write_config(tmp_path, f"  password: {SECRET}\n")
    existing = tmp_path / "bundle.tar.gz"
    existing.write_text("keep me\n")
    result = run_diag(config, existing)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert existing.read_text() == "keep me\n"


def test_diag_bundle_is_created_owner_only(tmp_path):
    config = write_config(tmp_path, f"  password: {SECRET}\n")
    output = tmp_path / "bundle.tar.gz"
    result = subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", *C8YSIM, "diag",
                             "--config", str(config), "-o", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert not [name for name, text in bundle(output).items() if SECRET in text]


# -- a hostile state directory: listed, never a crash -------------------------------------

def _good_buffer(state: Path) -> None:
    import sqlite3
    db = sqlite3.connect(state / "pv-roof.sqlite3")
    db.executescript("CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB,"
                     " created REAL); CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                     "INSERT INTO outbox VALUES (1, 's/us', x'00', 1.0);")
    db.close()


def test_diag_lists_broken_links_fifos_and_directories_and_goes_on(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    _good_buffer(state)
    (state / "gone.sqlite3").symlink_to(state / "nowhere.sqlite3")
    (state / "loop.sqlite3").symlink_to(state / "loop.sqlite3")
    os.mkfifo(state / "pipe.sqlite3")
    (state / "folder.sqlite3").mkdir()
    (state / "garbage.sqlite3").write_bytes(b"not a database at all" * 100)
    (state / "dir.sqlite3-wal").mkdir()
    config = write_config(tmp_path, f"  password: {SECRET}\n", state=state)
    output = tmp_path / "bundle.tar.gz"
    result = run_diag(config, output)
    assert result.returncode == 0, result.stderr
    files = bundle(output)
    buffers = json.loads(files["buffers.json"])
    assert buffers["pv-roof"]["outbox_rows"] == 1
    assert "broken symbolic link" in buffers["gone"]["error"]
    assert "error" in buffers["loop"]
    assert "not a regular file" in buffers["pipe"]["error"]
    assert "not a regular file" in buffers["folder"]["error"]
    assert "error" in buffers["garbage"]
    listing = files["state-dir.txt"]
    assert "'gone.sqlite3' -> " in listing and "(broken)" in listing
    assert "'pipe.sqlite3'" in listing and "'folder.sqlite3'" in listing


def test_diag_state_directory_that_is_a_file_or_missing(tmp_path):
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("x")
    not_a_dir.chmod(0o755)
    config = write_config(tmp_path, f"  password: {SECRET}\n", state=tmp_path / "state")
    config.write_text(config.read_text().replace(str(tmp_path / "state"), str(not_a_dir)))
    output = tmp_path / "bundle.tar.gz"
    result = run_diag(config, output)
    assert result.returncode == 0, result.stderr
    assert json.loads(bundle(output)["buffers.json"]) == {}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run diag as another user")
def test_diag_as_a_user_who_cannot_read_one_buffer(other_user_python):
    with tempfile.TemporaryDirectory(prefix="c8ysim-diag-") as tmp:  # pytest's is root-only
        os.chmod(tmp, 0o755)
        _diag_as_nobody(Path(tmp), other_user_python)


def _diag_as_nobody(tmp_path: Path, python) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _good_buffer(state)
    (state / "locked.sqlite3").write_bytes((state / "pv-roof.sqlite3").read_bytes())
    (state / "locked.sqlite3").chmod(0o000)
    config = write_config(tmp_path, f"  password: {SECRET}\n", state=state)
    os.chown(config, 65534, 65534)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.chown(out_dir, 65534, 65534)
    output = out_dir / "bundle.tar.gz"
    argv, env = python
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *argv, "-m", "c8ysim", "diag", "--config", str(config), "-o",
                             str(output)],
                            cwd="/", capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    buffers = json.loads(bundle(output)["buffers.json"])
    assert "error" in buffers["locked"]
    assert "'locked.sqlite3'" in bundle(output)["state-dir.txt"]


def test_diag_with_a_fifo_as_config_does_not_block(tmp_path):
    fifo = tmp_path / "c8ysim.yaml"
    os.mkfifo(fifo)
    output = tmp_path / "bundle.tar.gz"
    result = run_diag(fifo, output)
    assert result.returncode == 0, result.stderr
    assert "not a regular file" in bundle(output)["summary.txt"]


# -- wrongly typed passwords: never in check-config.txt ------------------------------------

@pytest.mark.parametrize("value", ["3.14159265", "!!binary aHVudGVyMi1acTh2WA==", "0777",
                                   "12:30:45"])
def test_diag_check_config_output_never_shows_a_mistyped_password(tmp_path, value):
    config = write_config(tmp_path, f"  password: {value}\n")
    output = tmp_path / "bundle.tar.gz"
    assert run_diag(config, output).returncode == 0
    files = bundle(output)
    assert "check-config: FAILED" in files["summary.txt"]
    assert "cumulocity.password must be a string" in files["check-config.txt"]
    assert not [name for name, text in files.items() if value in text or SECRET in text]


# -- the status page behind status.password_file ------------------------------------------

def test_diag_fetches_the_status_page_with_the_password_file_credentials(tmp_path,
                                                                          agent_factory):
    port, secret = free_port(), tmp_path / "status-password"
    secret.write_text("diag-st-pw-7e41\n")
    secret.chmod(0o600)
    config = conftest.write_config(tmp_path, free_port(), port, devices=[("pv-roof", "pv")])
    config.write_text(config.read_text().replace(
        f"'127.0.0.1:{port}'}}", f"'127.0.0.1:{port}', password_file: '{secret}'}}"))
    agent = agent_factory(config, port).start()
    assert agent.get("/api/status") is None  # 401 without credentials: auth is on
    result = run_diag(config, tmp_path / "bundle.tar.gz")
    assert result.returncode == 0, result.stderr
    files = bundle(tmp_path / "bundle.tar.gz")
    assert f"status page: http://127.0.0.1:{port}/api/status answered\n" in files["summary.txt"]
    assert [d["name"] for d in json.loads(files["status.json"])["devices"]] == ["pv-roof"]
    assert not [name for name, text in files.items() if "diag-st-pw-7e41" in text]
    assert "diag-st-pw-7e41" not in result.stdout + result.stderr
