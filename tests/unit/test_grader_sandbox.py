"""Python graders run fenced in: limits of time, memory and output, no network, nothing left behind."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunewright.graders import Runtime, Sample, SandboxLimits, grade, parse_grader
from tunewright.graders.sandbox import isolation_prefix, run_python

LIMITS = SandboxLimits(wall_s=20, cpu_s=10, memory_bytes=768 * 1024**2, output_bytes=4096)


def python_grader(source: str, *, text: str = "answer", item: dict | None = None, limits: SandboxLimits = LIMITS):
    grader = parse_grader({"type": "python", "name": "py", "source": source})
    runtime = Runtime(python=limits)
    runtime.check(grader)
    return grade(grader, Sample.from_text(text), item or {}, runtime)


@pytest.fixture
def listener():
    """A TCP server on loopback that counts the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[object] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(connection)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
    server.close()
    thread.join(timeout=5)


def test_grade_receives_the_sample_and_the_item():
    source = (
        "def grade(sample, item):\n"
        "    assert sample['output_json'] == {'a': 1} and sample['output_tools'] == []\n"
        "    return 1.0 if sample['output_text'].startswith(item['prefix']) else 0.0\n"
    )
    result = python_grader(source, text='{"a": 1}', item={"prefix": '{"a"'})
    assert result.reward == 1.0
    assert not result.errors.any()


def test_an_exception_is_the_graders_runtime_error_with_its_traceback_and_output():
    result = python_grader("def grade(sample, item):\n    print('looking')\n    return 1 / 0\n")
    assert result.reward == 0.0
    assert result.errors.python_grader_runtime_error
    details = result.errors.python_grader_runtime_error_details
    assert 'File "<grader>", line 3, in grade' in details
    assert "return 1 / 0" in details  # the grader's own source line
    assert "ZeroDivisionError" in details
    assert "looking" in details
    assert "sandbox_child" not in details
    assert not result.errors.unresponsive_reward_error


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def grade(sample, item):\n    return 'high'\n", "must return a number, not str"),
        ("def grade(sample, item):\n    return float('nan')\n", "finite"),
        ("def grade(sample, item):\n    return True\n", "not bool"),
        ("grade = 3\n", "NameError"),
        ("import os\ndef grade(sample, item):\n    os._exit(3)\n", "exited with code 3"),
        ("import sys\ndef grade(sample, item):\n    sys.exit(0)\n", "SystemExit"),
    ],
)
def test_graders_that_return_no_number_are_runtime_errors(source, words):
    result = python_grader(source)
    assert result.errors.python_grader_runtime_error
    assert words in result.errors.python_grader_runtime_error_details


@pytest.mark.slow
def test_an_endless_loop_is_killed_by_the_cpu_limit():
    limits = SandboxLimits(wall_s=120, cpu_s=1)
    result = python_grader("def grade(sample, item):\n    while True:\n        pass\n", limits=limits)
    assert (result.reward, result.errors.unresponsive_reward_error, result.errors.python_grader_runtime_error) == (
        0.0,
        True,
        True,
    )
    assert "1 s of CPU time" in result.errors.python_grader_runtime_error_details


@pytest.mark.slow
def test_a_grader_that_waits_is_killed_by_the_wall_clock():
    limits = SandboxLimits(wall_s=2, cpu_s=60)
    result = python_grader("import time\ndef grade(sample, item):\n    time.sleep(3600)\n", limits=limits)
    assert result.errors.unresponsive_reward_error
    assert "did not finish within 2 s" in result.errors.python_grader_runtime_error_details


def test_allocating_2_gb_is_stopped_by_the_memory_limit():
    result = python_grader("def grade(sample, item):\n    block = bytearray(2 * 1024**3)\n    return 1.0\n")
    assert result.errors.python_grader_runtime_error
    assert "MemoryError" in result.errors.python_grader_runtime_error_details


@pytest.mark.parametrize(
    "opening",
    [
        "socket.create_connection(('127.0.0.1', PORT), timeout=5)",
        "socket.socket().connect(('127.0.0.1', PORT))",
        "_socket.socket(_socket.AF_INET, _socket.SOCK_STREAM).connect(('127.0.0.1', PORT))",
        "socket.getaddrinfo('localhost', PORT)",
        "urllib.request.urlopen(f'http://127.0.0.1:{PORT}/', timeout=5)",
        "subprocess.run([sys.executable, '-c', 'import socket; socket.create_connection((\"127.0.0.1\", PORT))'])",
    ],
)
def test_opening_a_socket_fails(listener, opening):
    port, accepted = listener
    source = (
        "import socket, _socket, subprocess, sys, urllib.request\n"
        "def grade(sample, item):\n"
        f"    {opening.replace('PORT', str(port))}\n"
        "    return 1.0\n"
    )
    result = python_grader(source)
    assert result.errors.python_grader_runtime_error
    assert re.search(r"(OSError|PermissionError|URLError)", result.errors.python_grader_runtime_error_details)
    assert accepted == []


def test_the_network_namespace_has_no_route_even_for_code_outside_the_fence(listener):
    """`unshare -n` (where this host allows it): a plain interpreter in the namespace cannot reach the host."""
    prefix = isolation_prefix()
    if not prefix:
        pytest.skip("this host does not allow unshare -n; the sandbox fences the network in Python only")
    port, accepted = listener
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    inside = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, check=False)
    assert outside.returncode == 0
    assert inside.returncode != 0
    assert b"Network is unreachable" in inside.stderr or b"Connection refused" in inside.stderr
    assert len(accepted) == 1  # only the connection from outside the namespace


def test_files_written_in_the_working_directory_are_gone_afterwards():
    source = (
        "import os, tempfile\n"
        "def grade(sample, item):\n"
        "    open('notes.txt', 'w').write('x' * 1000)\n"
        "    os.mkdir('folder')\n"
        "    open('folder/deep.txt', 'w').write('y')\n"
        "    os.chmod('folder', 0)\n"
        "    with tempfile.NamedTemporaryFile(delete=False) as handle:\n"
        "        handle.write(b'z')\n"
        "    raise RuntimeError('workdir=' + os.getcwd() + ' tmp=' + handle.name)\n"
    )
    details = python_grader(source).errors.python_grader_runtime_error_details
    workdir, temporary = re.search(r"RuntimeError: workdir=(\S+) tmp=(\S+)", details).groups()
    assert Path(temporary).parent == Path(workdir)
    assert not Path(workdir).exists()


def test_files_outside_the_working_directory_cannot_be_read_or_written(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    for action in (
        f"open({str(secret)!r}).read()",
        f"open({str(tmp_path / 'new.txt')!r}, 'w')",
        "open('/etc/hostname')",
    ):
        result = python_grader(f"def grade(sample, item):\n    {action}\n    return 1.0\n")
        assert "PermissionError" in result.errors.python_grader_runtime_error_details, action
    listing = python_grader(f"import os\ndef grade(sample, item):\n    os.listdir({str(tmp_path)!r})\n")
    assert "PermissionError" in listing.errors.python_grader_runtime_error_details
    assert sorted(path.name for path in tmp_path.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize(
    "action",
    [
        "os.kill(os.getppid(), 9)",
        "os.system('true')",
        "resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        "import ctypes",
        "gc.get_objects()",
    ],
)
def test_the_parent_and_the_limits_are_out_of_reach(action):
    result = python_grader(f"import os, resource, gc\ndef grade(sample, item):\n    {action}\n    return 1.0\n")
    assert result.errors.python_grader_runtime_error, action
    assert re.search(r"(PermissionError|ImportError)", result.errors.python_grader_runtime_error_details)


def test_an_output_flood_is_truncated_and_the_score_still_counts():
    flood = "import sys\ndef grade(sample, item):\n    for _ in range(500):\n        print('x' * 10000)\n"
    assert python_grader(flood + "    return 0.5\n").reward == 0.5
    failed = python_grader(flood + "    raise ValueError('after the flood')\n")
    details = failed.errors.python_grader_runtime_error_details
    assert "ValueError: after the flood" in details
    assert "output truncated: 5000500 bytes printed, the first 4096 kept" in details
    assert len(details) < 4096 + 2000


def test_the_environment_is_empty_of_the_parents_secrets(monkeypatch):
    monkeypatch.setenv("TUNEWRIGHT_ADMIN_KEY", "sk-secret")
    outcome = run_python(
        "import os\ndef grade(sample, item):\n    return float(len([k for k in os.environ if 'TUNEWRIGHT' in k]))\n",
        {},
        {},
        LIMITS,
    )
    assert outcome.score == 0.0


def test_numpy_is_available_to_graders():
    result = python_grader("import numpy as np\ndef grade(sample, item):\n    return float(np.mean([0.5, 1.0]))\n")
    assert result.reward == 0.75


def test_a_large_item_reaches_the_grader_whole():
    item = {"text": "abc" * 2_000_000}  # 6 MB: many pipe buffers' worth, written as the child reads
    result = python_grader("def grade(sample, item):\n    return float(len(item['text']))\n", item=item)
    assert result.reward == 6_000_000.0
