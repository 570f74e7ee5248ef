"""The longest silences of a job (printed figures, not a test): runs a command, stamps each line it
prints (stdout and stderr, as a user's terminal shows them) and reports the longest gaps between
lines with the line that ended each.

    python bench/silence.py [--top 5] [--log FILE] -- python jobs/train.py --data data/prepared ...

The job's own output is passed through (prefixed with seconds since start) so that one run gives
both the figures and the transcript.
"""
import argparse
import subprocess
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=5, help="how many of the longest silences to report")
    parser.add_argument("--log", help="also write the stamped transcript to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the job, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    started = time.monotonic()
    stamped: list[tuple[float, str]] = [(0.0, "(start)")]
    lock = threading.Lock()
    log = open(args.log, "w") if args.log else None  # noqa: SIM115 (closed at the end; the pumps write to it)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def pump(stream):
        for line in stream:
            now = time.monotonic() - started
            with lock:
                stamped.append((now, line.rstrip("\n")))
                text = f"{now:8.1f}  {line.rstrip()}"
                print(text, flush=True)
                if log:
                    print(text, file=log, flush=True)

    readers = [threading.Thread(target=pump, args=(s,)) for s in (process.stdout, process.stderr)]
    for reader in readers:
        reader.start()
    code = process.wait()
    for reader in readers:
        reader.join()
    stamped.append((time.monotonic() - started, f"(exit {code})"))
    stamped.sort(key=lambda item: item[0])
    gaps = sorted(((b[0] - a[0], a, b) for a, b in zip(stamped, stamped[1:])), key=lambda g: -g[0])
    print(f"\n{len(stamped) - 2} lines in {stamped[-1][0]:.0f} s; exit {code}; the longest silences:")
    for gap, before, after in gaps[:args.top]:
        print(f"  {gap:6.1f} s  at {before[0]:7.1f} s, after: {before[1][:90]!r}\n{'':19}then: {after[1][:90]!r}")
    if log:
        log.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
