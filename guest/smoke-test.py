#!/usr/bin/env python3
"""Smoke test of the microvm test guest against a real Firecracker (needs /dev/kvm).

usage: guest/smoke-test.py FIRECRACKER_BIN GUEST_ELF
       (e.g. with the paths from `scripts/provision-test-assets.sh --print-env`)

Checks every mode of guest/README.md: banner, heartbeat interval, echo,
SendCtrlAltDel -> goodbye + exit 0, exit, triple-fault, crash (exit 1), hang.
Takes about 3 s; cleans up its processes and temporary files.
"""
import json, os, shutil, socket, subprocess, sys, tempfile, threading, time

FC, ELF = sys.argv[1:3] if len(sys.argv) == 3 else sys.exit(__doc__)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


class VM:
    def __init__(self, boot_args):
        self.dir = tempfile.mkdtemp(prefix="microvm-guest-smoke-")
        self.sock = os.path.join(self.dir, "api.sock")
        self.log = os.path.join(self.dir, "fc.log")
        cfg = {"boot-source": {"kernel_image_path": ELF, "boot_args": "console=ttyS0 " + boot_args},
               "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}
        with open(os.path.join(self.dir, "cfg.json"), "w") as f:
            json.dump(cfg, f)
        open(self.log, "w").close()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [FC, "--api-sock", self.sock, "--config-file", os.path.join(self.dir, "cfg.json"), "--log-path", self.log],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, raw.decode(errors="replace").rstrip("\n")))

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def ctrl_alt_del(self):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        body = b'{"action_type":"SendCtrlAltDel"}'
        s.sendall(b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        status = s.recv(4096).split(b"\r\n")[0]
        s.close()
        return status

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def texts(self):
        return [l for _, l in self.lines]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(1)
        with open(self.log) as f:
            self.log_text = f.read()
        shutil.rmtree(self.dir, ignore_errors=True)


# normal: banner, heartbeats, echo, Ctrl-Alt-Del
vm = VM("microvm.mode=normal microvm.heartbeat_ms=100")
time.sleep(0.6)
vm.send("hello world\r\n")
time.sleep(0.6)
t = time.monotonic()
status = vm.ctrl_alt_del()
rc = vm.wait(5)
dt = (time.monotonic() - t) * 1000
vm.close()
out = vm.texts()
check(out[:1] == ["microvm-guest: banner version=1 mode=normal heartbeat_ms=100"], "normal: banner first")
beats = [(ts, l) for ts, l in vm.lines if l.startswith("microvm-guest: heartbeat ")]
check([l for _, l in beats] == ["microvm-guest: heartbeat %d" % (i + 1) for i in range(len(beats))] and len(beats) >= 8,
      "normal: %d heartbeats numbered 1.." % len(beats))
if len(beats) > 2:
    iv = [(beats[i + 1][0] - beats[i][0]) * 1000 for i in range(len(beats) - 1)]
    check(all(80 <= x <= 120 for x in iv), "normal: heartbeat intervals %.1f-%.1f ms (want 100 +-20%%)" % (min(iv), max(iv)))
check("microvm-guest: echo hello world" in out, "normal: echo")
check(out[-1:] == ["microvm-guest: goodbye"], "normal: goodbye after Ctrl-Alt-Del (%s)" % status.decode())
check(rc == 0, "normal: Firecracker exit code %s, %.0f ms after SendCtrlAltDel" % (rc, dt))

# exit
vm = VM("microvm.mode=exit")
rc = vm.wait(5)
vm.close()
check(vm.texts() == ["microvm-guest: banner version=1 mode=exit heartbeat_ms=250", "microvm-guest: goodbye"] and rc == 0,
      "exit: banner, goodbye, exit code %s" % rc)

# triple-fault
vm = VM("microvm.mode=triple-fault microvm.heartbeat_ms=0")
rc = vm.wait(5)
vm.close()
check(vm.texts() == ["microvm-guest: banner version=1 mode=triple-fault heartbeat_ms=0"] and rc == 0
      and "KVM_EXIT_SHUTDOWN" in vm.log_text, "triple-fault: banner, KVM_EXIT_SHUTDOWN logged, exit code %s" % rc)

# crash
vm = VM("microvm.mode=crash")
rc = vm.wait(5)
vm.close()
check(len(vm.texts()) == 1 and rc == 1 and "KVM_EXIT_INTERNAL_ERROR" in vm.log_text,
      "crash: banner, KVM_EXIT_INTERNAL_ERROR logged, exit code %s" % rc)

# hang
vm = VM("microvm.mode=hang")
time.sleep(0.3)
vm.send("ping\n")
vm.ctrl_alt_del()
rc = vm.wait(1.0)
vm.close()
check(vm.texts() == [] and rc is None, "hang: silent, ignores input and Ctrl-Alt-Del")

print("FAILED: %d check(s)" % len(failures) if failures else "all checks passed")
sys.exit(1 if failures else 0)
