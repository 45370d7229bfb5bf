"""The Dockerfile cannot be built here (no Docker engine), so its essentials are checked as text
and against the chart: multi-stage, static musl build with the locked dependencies, distroless
non-root runtime with the uid the chart runs as, and an entrypoint the chart's args fit."""

from __future__ import annotations

import json
import re

from chartlib import REPO, chart_metadata, default_values, render

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert current == "", "dangling line continuation"
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _args() -> dict[str, str]:
    out = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out.setdefault(k, v)
    return out


def test_multi_stage_static_build() -> None:
    builder, runtime = _stages()
    assert re.fullmatch(r"docker\.io/library/rust:\$\{RUST_VERSION\}-bookworm AS builder", builder[0][1])
    assert re.fullmatch(r"1\.\d+", _args()["RUST_VERSION"])
    text = " ".join(rest for _, rest in builder)
    assert "musl-tools" in text
    assert "x86_64-unknown-linux-musl" in text and "rustup target add" in text
    assert re.search(r"cargo build --release --locked --target \"\$target\" --bin portico", text)
    assert "program interpreter" in text  # the build fails on a dynamically linked binary
    assert "/out/portico version" in text


def test_rust_version_satisfies_the_workspace() -> None:
    need = re.search(r'rust-version\s*=\s*"1\.(\d+)"', (REPO / "Cargo.toml").read_text())
    assert need, "workspace rust-version"
    have = int(_args()["RUST_VERSION"].split(".")[1])
    assert have >= int(need.group(1))


def test_no_openssl_or_system_libraries_needed() -> None:
    lock = (REPO / "Cargo.lock").read_text()
    for crate in ("openssl-sys", "aws-lc-sys", "libz-sys", "native-tls"):
        assert f'name = "{crate}"' not in lock, f"{crate} would need a C library in the static build"


def test_runtime_is_distroless_non_root_with_the_chart_uid() -> None:
    _, runtime = _stages()
    assert runtime[0] == ("FROM", "${RUNTIME_IMAGE}")
    assert _args()["RUNTIME_IMAGE"] == "gcr.io/distroless/static-debian12:nonroot"
    words = dict(runtime)
    assert words["USER"] == "65532:65532"
    psc = default_values()["podSecurityContext"]
    assert f'{psc["runAsUser"]}:{psc["runAsGroup"]}' == words["USER"]
    assert "RUN" not in words  # nothing executes in the runtime stage (it has no shell)
    copy = [rest for w, rest in runtime if w == "COPY"]
    assert copy == ["--from=builder --chown=0:0 /out/portico /usr/local/bin/portico"]


def test_entrypoint_fits_the_chart() -> None:
    _, runtime = _stages()
    words = dict(runtime)
    assert json.loads(words["ENTRYPOINT"]) == ["/usr/local/bin/portico"]
    assert json.loads(words["CMD"]) == ["run"]
    out = render()
    assert "command" not in out.container and out.args[0] == "run"
    exposed = set(words["EXPOSE"].split())
    assert {str(p["containerPort"]) for p in out.container["ports"]} == exposed


def test_documented_build_matches_the_chart_default_image() -> None:
    image = default_values()["image"]["repository"]
    tag = chart_metadata()["appVersion"]
    assert f"docker build -t {image}:{tag} ." in DOCKERFILE.read_text()


def test_dockerignore_keeps_build_output_out_of_the_context() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "**/target" in ignored and ".git" in ignored
