"""Benchmark: a job's wall time alone and beside other CPU-bound processes (printed figures, not a test).

    python bench/busy.py --others 0 1 2 -- python jobs/train.py --data data/corpus --run-name busy

Runs the command once per count in --others, each time beside that many processes that spin one
CPU each (as other programs on a shared machine do), and prints its wall time against the time
alone. A job that shares the CPU well takes about (k + 1) times its time alone beside k others on
a machine of k + 1 CPUs or fewer: its fits hold the threads they were given and wait without
spinning (caspar.runtime); a job whose threads spin took up to 15 times longer.
"""
import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def spin() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--others", type=int, nargs="+", default=[0, 1, 2], help="CPU-bound processes beside the job")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to time")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    alone = None
    print(f"{os.cpu_count()} CPUs; command: {' '.join(command)}", flush=True)
    for others in args.others:
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(others)]
        for process in spinners:
            process.start()
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
        for process in spinners:
            process.terminate()
        if done.returncode != 0:
            print(f"beside {others}: the command failed ({done.returncode}): {done.stderr[-500:]}", flush=True)
            return 1
        alone = seconds if others == 0 else alone
        ratio = f"; {seconds / alone:.2f}x the time alone (fair share: {others + 1}x)" if alone else ""
        print(f"beside {others} CPU-bound process{'es' * (others != 1)}: {seconds:.0f} s{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
