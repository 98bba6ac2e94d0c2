"""Run the Vespa verification program (``infra/vespa/verify``, Vespa's own Java code) from the tests.

:func:`run` writes a request (packages to build, feed operations to read, query bodies to rank with)
as JSON, runs ``pdfvisual.verify.VerifyVespa`` once with Maven offline, and returns the result JSON.
The program's request and result formats are documented in ``VerifyVespa.java``. ``make setup``
installs Java and Maven and downloads the Vespa jars once; without them the tests fail (they are
part of the suite, never skipped) with a message saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "infra" / "vespa" / "verify"
MAIN_CLASS = "pdfvisual.verify.VerifyVespa"
SETUP_HINT = (
    "run `make setup` (installs openjdk-17-jdk-headless and maven with apt when missing, then downloads "
    "Vespa's jars from Maven Central once; see infra/vespa/README.md)"
)


class VespaJavaError(RuntimeError):
    """The verification program could not be built or run (not: it ran and found a problem)."""


def _require_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        msg = f"{' and '.join(missing)} not found on PATH: the Vespa Java checks need Java 17+ and Maven; {SETUP_HINT}"
        raise VespaJavaError(msg)


def _built() -> bool:
    """Whether ``target/`` holds classes and a classpath newer than every source file and the POM."""
    marker = MODULE / "target" / "classpath.txt"
    if not marker.exists() or not (MODULE / "target" / "classes").is_dir():
        return False
    sources = [MODULE / "pom.xml", *(MODULE / "src").rglob("*")]
    return max(path.stat().st_mtime for path in sources) < marker.stat().st_mtime


def classpath(timeout_s: float = 300) -> str:
    """Compile the module offline (incremental) and return the runtime classpath.

    Maven is skipped when ``target/`` is newer than the sources (its start-up alone costs seconds).
    """
    _require_tools()
    if _built():
        return _joined_classpath()
    command = ["mvn", "-o", "-q", "-B", "-f", str(MODULE / "pom.xml"), "compile", "dependency:build-classpath"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        msg = f"offline Maven build of {MODULE} failed (are the Vespa jars downloaded?); {SETUP_HINT}\n{output}"
        raise VespaJavaError(msg)
    (MODULE / "target" / "classpath.txt").touch()  # rewritten only when it changes: mark this build as current
    return _joined_classpath()


def _joined_classpath() -> str:
    jars = (MODULE / "target" / "classpath.txt").read_text().strip()
    return os.pathsep.join([str(MODULE / "target" / "classes"), jars])


def run(request: dict[str, Any], workdir: Path, timeout_s: float = 600) -> dict[str, Any]:
    """Run the program on ``request`` (written under ``workdir``) and return its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    request_path, result_path = workdir / "request.json", workdir / "result.json"
    request_path.write_text(json.dumps(request))
    command = ["java", "-cp", classpath(), MAIN_CLASS, str(request_path), str(result_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0 or not result_path.exists():
        msg = f"{MAIN_CLASS} exited with {result.returncode}:\n{(result.stdout + result.stderr)[-6000:]}"
        raise VespaJavaError(msg)
    return json.loads(result_path.read_text())
