"""Peak RSS of a benchmark's child process, as source text the child runs (``PEAK + code``).

VmHWM from /proc, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child
would report at least its parent's peak.
"""

PEAK = r"""
import resource
def peak_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""
