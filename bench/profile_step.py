"""Where a group's device time goes: a labelled ``torch.profiler`` trace of K instances' steps.

For each setting (``K:key=value,...``, as in ``bench/step_throughput.py``) this builds the
reconstructor as that bench does (``--gan reference``: a random StyleGAN2 with the preset
checkpoint's architecture, random LPIPS weights), runs its warm-up and timed runs
(``step_throughput.measure``: an untimed run at ``--warmup-fast``, then a timed run at
``--timed-fast`` whose per-step seconds price the full schedule), then one more run of
``reconstruct_many`` at ``--fast`` (every step still runs: prior fit, step 1, step 2,
collection, step 3, in every stage) under ``torch.profiler.profile``, with CUDA activity on a
GPU and CPU activity otherwise.

Labels. The method's code is not touched: the classes it calls are wrapped here, at class level,
in ``torch.profiler.record_function`` ranges (``prof::<label>``):

    G            recon.stylegan2.Generator.forward (and the compiled generator, see below)
    D features   recon.stylegan2.Discriminator.features (and the compiled one)
    netD ... netEnc (E)
                 recon.method.stacked.StackedNetwork.__call__, named after the network the
                 reconstructor built it from (Reconstructor.networks)
    latent offset  recon.method.latent.LatentProjector.offset (E's output through the mapping tail)
    LPIPS        recon.models.lpips.LPIPS.forward
    renderer     every public method of recon.renderer.DepthRenderer
    optimizer    torch.optim.Adam.step
    copies       host<->device memory copies (Memcpy HtoD / DtoH), wherever they are issued
    other        device time under none of the above: losses, shading and warping in the engine,
                 sampling, gradient accumulation, ...

With ``gan_compile`` the compiled code ignores ``record_function`` (torch.compile treats it as a
null context), so ``torch.compile`` itself is wrapped while the reconstructor is built: the
callable it returns for the generator or the discriminator's features is called inside the label.

Steps. ``InstanceGroup.fit_prior/step1/step2/collect/step3`` (recon.method.engine) are wrapped
the same way (``step::<name>``), so every device interval is also charged to the step that was
running when its work was launched; without them (renamed) the per-step tables are left out and
a warning says so.

Attribution. Each device event (kernel, memcpy, memset) names the CPU op that launched it (its
correlation id); that op is charged to the innermost label among its enclosing CPU ranges. The
backward pass runs on autograd's own thread, outside every label: a backward op is charged to the
label of the forward op that recorded its autograd node (the profiler's sequence numbers). On the
CPU (no device events) the "device time" is the self time of every op, charged the same way.

Columns. ``device ms``: the summed duration of the label's device events. ``% of busy``: of the
union of all device intervals (the time the device was doing anything; overlapping streams can
make the rows sum to more than 100). ``% of wall``: of the profiled run's wall time. The
``busy`` row is that union over the wall time: the fraction of the run the GPU was busy.
Per step: milliseconds per iteration (collection: per pass) profiled and in the timed run
without the profiler, and the busy fraction against both. "full schedule" figures weight each
step's per-iteration figures by the full schedule's iteration counts (what a whole run would be),
plus the setup outside the steps once.

The profiler slows the host (a few microseconds per op and per launch): with one instance,
where the GPU waits on the host, the profiled wall time is longer than the timed run's, so the
busy fraction against the timed run (``busy of unprofiled wall``) is the better estimate.

    python bench/profile_step.py --device cuda --preset celeba \\
        --settings 32:autocast=bf16,lpips_autocast=bf16 1: --json bench/results/profile.json
    # plumbing check on a CPU in about a minute:
    python bench/profile_step.py --device cpu --gan tiny --preset synface --settings 2: \\
        --fast 0.002 --no-timed --no-warmup
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import gc
import inspect
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from report_path import report_path  # noqa: E402
from step_throughput import (  # noqa: E402
    bench_bundle,
    device_sync,
    full_counts,
    make_items,
    measure,
    parse_setting,
    timed_reconstruct,
    warm_up,
)

from recon.method.config import parse_assignments  # noqa: E402

PREFIX = "prof::"
STEP_PREFIX = "step::"
NETWORK_LABELS = {"netD": "netD", "netA": "netA", "netV": "netV", "netL": "netL", "netEnc": "netEnc (E)"}
#: Every row of the table, in print order.
LABELS = ("G", "D features", *NETWORK_LABELS.values(), "latent offset", "LPIPS", "renderer", "optimizer",
          "copies", "other")
STEPS = ("fit_prior", "step1", "step2", "collect", "step3")
#: step method -> the key the engine's iteration counts and step_throughput's schedule use.
STEP_KEYS = {"fit_prior": "prior", "step1": "step1", "step2": "step2", "collect": "collect", "step3": "step3"}
OUTSIDE = "outside steps"
#: Labels the run must give device time to, whatever the settings (LPIPS too when the preset uses it).
REQUIRED = ("G", "D features", "renderer", "optimizer", *NETWORK_LABELS.values())


class ProfileSetupError(RuntimeError):
    """A class or method the labels hang on is gone, or a label got no device time."""


# ---------------------------------------------------------------------------------------- labelling
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


class Labeller:
    """Installs the record_function wrappers (see the module docstring); ``restore()`` undoes them."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.network_names: dict[int, str] = {}  # id(template module) -> label
        self.compiled: list[str] = []  # labels whose compiled callable was wrapped
        self.warnings: list[str] = []
        self.has_steps = False
        self._undo: list[Callable[[], None]] = []

    # -- helpers
    def _set(self, owner: Any, name: str, value: Any) -> None:
        old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))

    def _count(self, label: str) -> None:
        if not _is_compiling():  # no Python side effects inside a traced graph
            self.calls[label] += 1

    def _wrap(self, fn: Callable, label: str | Callable[[Any], str], prefix: str = PREFIX) -> Callable:
        labeller = self

        @functools.wraps(fn)
        def wrapper(obj, *args, **kwargs):
            name = label if isinstance(label, str) else label(obj)
            labeller._count(name)
            with torch.profiler.record_function(prefix + name):
                return fn(obj, *args, **kwargs)

        wrapper.__prof_wrapped__ = True  # type: ignore[attr-defined]
        return wrapper

    def _method(self, cls: type, name: str, label: str | Callable[[Any], str], prefix: str = PREFIX) -> None:
        fn = cls.__dict__.get(name)
        if fn is None or not callable(fn):
            raise ProfileSetupError(f"{cls.__module__}.{cls.__qualname__}.{name} not found: the profile's "
                                    f"'{label if isinstance(label, str) else name}' label hangs on it "
                                    "(renamed or moved? update bench/profile_step.py)")
        self._set(cls, name, self._wrap(fn, label, prefix))

    @staticmethod
    def _find(module: str, name: str) -> type:
        import importlib

        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ProfileSetupError(f"{module}.{name} not found ({exc}): the profile's labels hang on it "
                                    "(renamed or moved? update bench/profile_step.py)") from exc

    # -- the labels
    def install(self) -> "Labeller":
        try:
            self._install()
        except BaseException:
            self.restore()
            raise
        return self

    def _install(self) -> None:
        generator = self._find("recon.stylegan2", "Generator")
        discriminator = self._find("recon.stylegan2", "Discriminator")
        self._method(generator, "forward", "G")
        self._method(discriminator, "features", "D features")
        self._method(self._find("recon.models.lpips", "LPIPS"), "forward", "LPIPS")
        self._method(self._find("recon.method.latent", "LatentProjector"), "offset", "latent offset")

        stacked = self._find("recon.method.stacked", "StackedNetwork")
        init = stacked.__dict__.get("__init__")
        params = list(inspect.signature(init).parameters) if init is not None else []
        if len(params) < 2:
            raise ProfileSetupError("recon.method.stacked.StackedNetwork.__init__(self, module, ...) not found: "
                                    "the network labels name each stack by the module it copies")
        names = self.network_names

        @functools.wraps(init)
        def stacked_init(obj, module, *args, **kwargs):
            init(obj, module, *args, **kwargs)
            obj.__prof_label__ = names.get(id(module), type(module).__name__)

        self._set(stacked, "__init__", stacked_init)
        self._method(stacked, "__call__", lambda obj: getattr(obj, "__prof_label__", "StackedNetwork"))

        renderer = self._find("recon.renderer", "DepthRenderer")
        public = [n for n, v in vars(renderer).items() if not n.startswith("_") and inspect.isfunction(v)]
        if not public:
            raise ProfileSetupError("recon.renderer.DepthRenderer has no public methods left to label 'renderer'")
        for name in public:
            self._method(renderer, name, "renderer")
        self._method(torch.optim.Adam, "step", "optimizer")

        # Steps: optional (the engine is being reworked); without them there is no per-step split.
        try:
            group = self._find("recon.method.engine", "InstanceGroup")
            missing = [s for s in STEPS if not callable(group.__dict__.get(s))]
            if missing:
                raise ProfileSetupError(f"recon.method.engine.InstanceGroup lacks {', '.join(missing)}")
        except ProfileSetupError as exc:
            self.warn(f"no per-step split: {exc}")
        else:
            for s in STEPS:
                self._method(group, s, s, prefix=STEP_PREFIX)
            self.has_steps = True

        real_compile = torch.compile
        labeller = self

        def labelled_compile(model=None, *args, **kwargs):
            if model is None:  # decorator form: torch.compile(backend=...)(fn)
                return lambda fn: labelled_compile(fn, *args, **kwargs)
            compiled = real_compile(model, *args, **kwargs)
            target = getattr(model, "__func__", None)
            if isinstance(model, generator):
                label = "G"
            elif isinstance(getattr(model, "__self__", None), discriminator) and target is not None \
                    and target.__name__ == "features":
                label = "D features"
            else:
                return compiled
            labeller.compiled.append(label)
            return _LabelledCallable(compiled, label, labeller)

        self._set(torch, "compile", functools.wraps(real_compile)(labelled_compile))

    def name_networks(self, rec: Any) -> None:
        """Name the stacks a reconstructor's groups will build: by the networks it holds."""
        nets = getattr(rec, "networks", None)
        if not isinstance(nets, dict) or not set(NETWORK_LABELS) <= set(nets):
            raise ProfileSetupError(f"Reconstructor.networks should map {', '.join(NETWORK_LABELS)} to modules, "
                                    f"got {type(nets).__name__}: the network labels name each stack by it")
        self.network_names.clear()
        for name, label in NETWORK_LABELS.items():
            self.network_names[id(nets[name])] = label

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"warning: {text}", flush=True)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


class _LabelledCallable:
    """A compiled callable called inside its label (compiled code ignores record_function)."""

    def __init__(self, compiled: Callable, label: str, labeller: Labeller):
        self._compiled, self._label, self._labeller = compiled, label, labeller

    def __call__(self, *args, **kwargs):
        self._labeller._count(self._label)
        with torch.profiler.record_function(PREFIX + self._label):
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._compiled, name)


# ---------------------------------------------------------------------------------------- attribution
def _method_or(obj: Any, name: str, default: Any) -> Any:
    fn = getattr(obj, name, None)
    if fn is None:
        return default
    try:
        return fn()
    except Exception:  # pragma: no cover - an accessor this torch build does not implement
        return default


def union_ns(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of [start, end) intervals."""
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def attribute(kineto_events: list, device_kind: str) -> dict:
    """Charge every device interval (or, on the CPU, every op's self time) to a label and a step.

    Returns {"device": [(label, step, start_ns, end_ns, name)], "steps": [(step, start_ns, end_ns)]},
    ``step`` being None where no step range encloses the launch.
    """
    cpu, device = [], []
    for e in kineto_events:
        dtype = str(_method_or(e, "device_type", "")).rsplit(".", 1)[-1]
        start = int(e.start_ns())
        ev = SimpleNamespace(
            name=e.name(), start=start, end=start + int(_method_or(e, "duration_ns", 0)),
            corr=int(_method_or(e, "correlation_id", 0)), linked=int(_method_or(e, "linked_correlation_id", 0)),
            thread=int(_method_or(e, "start_thread_id", 0)), seq=int(_method_or(e, "sequence_nr", -1)),
            fwd_thread=int(_method_or(e, "fwd_thread_id", 0)),
            annotation=bool(_method_or(e, "is_user_annotation", False)),
            activity=str(_method_or(e, "activity_type", "")), parent=None, children_ns=0)
        if dtype == "CPU":
            if not _method_or(e, "is_async", False) and ev.linked == 0:  # ops and ranges, not runtime calls
                cpu.append(ev)
        else:
            device.append(ev)

    # The CPU tree, per thread: each range's parent is the innermost range that encloses it.
    by_thread: dict[int, list] = defaultdict(list)
    for ev in cpu:
        by_thread[ev.thread].append(ev)
    for events in by_thread.values():
        events.sort(key=lambda ev: (ev.start, -ev.end))
        stack: list = []
        for ev in events:
            while stack and stack[-1].end <= ev.start:
                stack.pop()
            if stack:
                ev.parent = stack[-1]
                stack[-1].children_ns += ev.end - ev.start
            stack.append(ev)
    by_corr = {ev.corr: ev for ev in cpu}
    annotation_names = {ev.name for ev in cpu if ev.annotation}
    # forward ops by (thread, sequence number): the one that made the autograd node starts last
    forward: dict[tuple[int, int], Any] = {}
    for ev in cpu:
        if ev.seq >= 0 and ev.fwd_thread == 0 and not ev.annotation:
            key = (ev.thread, ev.seq)
            if key not in forward or ev.start > forward[key].start:
                forward[key] = ev

    memo: dict[int, str] = {}

    def label_of(ev, depth: int = 0) -> str:
        chain, found = [], "other"
        node = ev
        while node is not None:
            if id(node) in memo:
                found = memo[id(node)]
                break
            chain.append(node)
            if node.name.startswith(PREFIX):
                found = node.name[len(PREFIX):]
                break
            if node.fwd_thread and node.seq >= 0 and depth < 4:  # a backward op: its forward op's label
                fwd = forward.get((node.fwd_thread, node.seq))
                if fwd is not None:
                    found = label_of(fwd, depth + 1)
                    if found != "other":
                        break
            node = node.parent
        for n in chain:
            memo[id(n)] = found
        return found

    steps = sorted(((ev.name[len(STEP_PREFIX):], ev.start, ev.end) for ev in cpu if ev.name.startswith(STEP_PREFIX)),
                   key=lambda s: s[1])
    step_starts = [s[1] for s in steps]

    def step_at(t: int) -> str | None:
        i = bisect.bisect_right(step_starts, t) - 1
        return steps[i][0] if i >= 0 and t < steps[i][2] else None

    out = []
    if device_kind == "cuda":
        for ev in device:
            if ev.annotation or "annotation" in ev.activity or ev.name in annotation_names:
                continue  # record_function ranges drawn on the device timeline: not work
            if ev.activity and ev.activity not in ("kernel", "gpu_memcpy", "gpu_memset", "concurrent_kernel"):
                continue
            op = by_corr.get(ev.linked)
            copy = ev.name.startswith("Memcpy") and ("HtoD" in ev.name or "DtoH" in ev.name)
            label = "copies" if copy else (label_of(op) if op is not None else "other")
            out.append((label, step_at(op.start if op is not None else ev.start), ev.start, ev.end, ev.name))
    else:
        for ev in cpu:
            if ev.annotation:
                continue
            self_ns = ev.end - ev.start - ev.children_ns
            if self_ns > 0:  # the op's own time as one interval from its start (it is disjoint in total only)
                out.append((label_of(ev), step_at(ev.start), ev.start, ev.start + self_ns, ev.name))
    return {"device": out, "steps": steps}


def summarise(attributed: dict, wall_ns: int, device_kind: str) -> dict:
    """Totals per label, busy time, per step; top unlabelled names."""
    device = attributed["device"]
    per_label: dict[str, int] = {label: 0 for label in LABELS}
    per_step_label: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    step_intervals: dict[str, list] = defaultdict(list)
    other_names: dict[str, int] = defaultdict(int)
    for label, step, a, b, name in device:
        per_label[label] = per_label.get(label, 0) + (b - a)
        per_step_label[step or OUTSIDE][label] += b - a
        step_intervals[step or OUTSIDE].append((a, b))
        if label == "other":
            other_names[name] += b - a
    if device_kind == "cuda":
        busy = union_ns([(a, b) for _, _, a, b, _ in device])
    else:  # op self times of one thread are disjoint; on several threads they may overlap
        busy = min(sum(b - a for _, _, a, b, _ in device), wall_ns)
    step_wall: dict[str, int] = defaultdict(int)
    step_count: dict[str, int] = defaultdict(int)
    for name, a, b in attributed["steps"]:
        step_wall[name] += b - a
        step_count[name] += 1
    step_wall[OUTSIDE] = max(0, wall_ns - sum(step_wall.values()))
    ms = lambda ns: ns / 1e6  # noqa: E731
    labels = {label: {"device_ms": ms(ns), "pct_busy": 100 * ns / busy if busy else 0.0,
                      "pct_wall": 100 * ns / wall_ns if wall_ns else 0.0} for label, ns in per_label.items()}
    steps = {}
    for step in [*STEPS, OUTSIDE]:
        if step not in step_wall and step not in per_step_label:
            continue
        intervals = step_intervals.get(step, [])
        steps[step] = {"wall_ms": ms(step_wall.get(step, 0)), "ranges": step_count.get(step, 0),
                       "busy_ms": ms(union_ns(intervals) if device_kind == "cuda" else sum(b - a for a, b in intervals)),
                       "labels_ms": {label: ms(ns) for label, ns in per_step_label.get(step, {}).items()}}
    top = sorted(other_names.items(), key=lambda kv: -kv[1])[:15]
    return {"wall_ms": ms(wall_ns), "busy_ms": ms(busy), "busy_fraction": busy / wall_ns if wall_ns else 0.0,
            "device_events": len(device), "labels": labels, "steps": steps,
            "other_top": [{"name": n, "device_ms": ms(ns)} for n, ns in top]}


def schedule_view(summary: dict, iterations: dict[str, int], counts: dict[str, int],
                  timed: dict | None) -> dict:
    """Per-iteration figures of each step and their full-schedule weighting."""
    rows, full_busy, full_wall, full_labels = {}, 0.0, 0.0, defaultdict(float)
    unprofiled_full = 0.0
    for step, s in summary["steps"].items():
        key = STEP_KEYS.get(step)
        n = iterations.get(key, 0) if key else 1
        if not n:
            continue
        weight = counts.get(key, 0) / n if key else 1.0  # the setup outside the steps: once per group
        unprof = (timed or {}).get("seconds_per_iteration", {}).get(key) if key else (timed or {}).get("setup_seconds")
        row = {"iterations": n, "full_iterations": counts.get(key) if key else None,
               "wall_ms_per_iter": s["wall_ms"] / n, "busy_ms_per_iter": s["busy_ms"] / n,
               "unprofiled_ms_per_iter": 1e3 * unprof if unprof is not None else None}
        row["busy_of_wall"] = row["busy_ms_per_iter"] / row["wall_ms_per_iter"] if row["wall_ms_per_iter"] else 0.0
        if row["unprofiled_ms_per_iter"]:
            row["busy_of_unprofiled"] = row["busy_ms_per_iter"] / row["unprofiled_ms_per_iter"]
            unprofiled_full += row["unprofiled_ms_per_iter"] * (counts.get(key, 0) if key else 1)
        rows[step] = row
        full_busy += s["busy_ms"] * weight
        full_wall += s["wall_ms"] * weight
        for label, v in s["labels_ms"].items():
            full_labels[label] += v * weight
    total = sum(full_labels.values())
    return {"steps": rows, "full_busy_ms": full_busy, "full_wall_ms": full_wall,
            "full_busy_fraction": full_busy / full_wall if full_wall else 0.0,
            "full_unprofiled_ms": unprofiled_full or None,
            "full_busy_of_unprofiled": full_busy / unprofiled_full if unprofiled_full else None,
            "full_labels": {label: {"device_ms": full_labels.get(label, 0.0),
                                    "pct_device": 100 * full_labels.get(label, 0.0) / total if total else 0.0}
                            for label in LABELS}}


# ---------------------------------------------------------------------------------------- running
def profiled_run(bundle: Path, args, k: int, overrides: dict, labeller: Labeller) -> dict:
    """One labelled, profiled run of K instances at ``args.fast`` (the caller warmed the process up)."""
    from recon import Reconstructor

    cuda = args.device.startswith("cuda")
    rec = Reconstructor(str(bundle), args.preset, device=args.device, overrides={**overrides, "fast": args.fast})
    labeller.name_networks(rec)
    items = make_items(rec, k)
    labeller.calls.clear()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    device_sync(args.device)()
    with torch.profiler.profile(activities=activities, record_shapes=False, with_stack=False) as prof:
        results, seconds = timed_reconstruct(rec, items, k, args.device)
        wall_ns = int(seconds * 1e9)
    kineto = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if kineto is None:
        raise ProfileSetupError("torch.profiler.profile().profiler.kineto_results is missing in this torch "
                                f"({torch.__version__}): the attribution reads the raw profiler events from it")
    t0 = time.perf_counter()
    attributed = attribute(list(kineto.events()), "cuda" if cuda else "cpu")
    if not attributed["device"]:
        raise ProfileSetupError(f"the profiler recorded no {'CUDA kernels' if cuda else 'CPU ops'} "
                                "(CUPTI unavailable to this torch build?): nothing to attribute")
    summary = summarise(attributed, wall_ns, "cuda" if cuda else "cpu")
    summary["analysis_seconds"] = time.perf_counter() - t0
    r0 = results[0]
    iterations = dict(r0.iterations)
    iterations["collect"] = rec.config.collect * rec.config.num_stage
    if args.trace:
        prof.export_chrome_trace(str(Path(args.trace).with_suffix(f".k{k}.json")))
    summary.update(iterations=iterations, step_seconds=dict(r0.step_seconds), calls=dict(labeller.calls),
                   compiled=list(labeller.compiled), lpips=rec.lpips is not None, fits_prior=rec.fits_prior)
    del rec, results, prof, kineto, attributed
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return summary


def check_labels(summary: dict) -> list[str]:
    """The labels that got no device time, and why (a renamed class, or compiled code that escaped)."""
    problems = []
    required = [*REQUIRED, *(["LPIPS"] if summary["lpips"] else [])]
    for label in required:
        if summary["labels"].get(label, {}).get("device_ms", 0.0) > 0:
            continue
        calls = summary["calls"].get(label, 0)
        why = (f"its wrapper ran {calls} times, but none of the device work was charged to it"
               if calls else "its wrapper was never called: the engine no longer goes through it")
        problems.append(f"label {label!r} got no device time ({why}); see bench/profile_step.py's docstring "
                        "for what each label wraps")
    return problems


def print_tables(setting: str, summary: dict, sched: dict | None, device_name: str) -> None:
    wall, busy = summary["wall_ms"], summary["busy_ms"]
    unit = "GPU ms" if device_name == "cuda" else "CPU ms"
    print(f"\n{setting}: profiled run {wall / 1e3:.2f} s, {summary['device_events']} device events "
          f"({summary['analysis_seconds']:.1f} s to attribute)")
    full = sched["full_labels"] if sched else None
    head = f"{'label':16s} {unit:>10s} {'% of busy':>10s} {'% of wall':>10s}"
    print(head + (f" {'full sched %':>13s}" if full else ""))
    for label in LABELS:
        row = summary["labels"][label]
        print(f"{label:16s} {row['device_ms']:10.1f} {row['pct_busy']:10.1f} {row['pct_wall']:10.1f}"
              + (f" {full[label]['pct_device']:13.1f}" if full else ""))
    total = sum(r["device_ms"] for r in summary["labels"].values())
    print(f"{'sum of labels':16s} {total:10.1f} {100 * total / busy if busy else 0:10.1f} "
          f"{100 * total / wall if wall else 0:10.1f}")
    print(f"{'busy (union)':16s} {busy:10.1f} {100.0 if busy else 0:10.1f} {100 * busy / wall if wall else 0:10.1f}")
    print(f"{'wall':16s} {wall:10.1f}")
    if sched:
        print(f"{'step':14s} {'iters':>6s} {'ms/iter prof':>13s} {'ms/iter timed':>14s} {'busy ms/iter':>13s} "
              f"{'busy/prof':>10s} {'busy/timed':>11s}")
        for step, r in sched["steps"].items():
            un = r["unprofiled_ms_per_iter"]
            print(f"{step:14s} {r['iterations']:6d} {r['wall_ms_per_iter']:13.1f} "
                  f"{un if un is not None else float('nan'):14.1f} {r['busy_ms_per_iter']:13.1f} "
                  f"{100 * r['busy_of_wall']:9.1f}% "
                  + (f"{100 * r['busy_of_unprofiled']:10.1f}%" if "busy_of_unprofiled" in r else f"{'n/a':>11s}"))
        line = f"full schedule: busy {100 * sched['full_busy_fraction']:.1f}% of the profiled wall time"
        if sched["full_busy_of_unprofiled"] is not None:
            line += f", {100 * sched['full_busy_of_unprofiled']:.1f}% of the timed run's (no profiler)"
        print(line)
    if summary["other_top"]:
        print("largest in 'other': " + ", ".join(f"{o['name'][:48]} {o['device_ms']:.1f}"
                                                   for o in summary["other_top"][:6]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="celeba")
    p.add_argument("--gan", choices=("reference", "synthetic", "tiny"), default="reference")
    p.add_argument("--size", type=int, default=64, help="image size of the synthetic instrument (--gan synthetic)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--settings", nargs="+", default=["32:autocast=bf16,lpips_autocast=bf16"],
                   help="K:key=value,... (as in step_throughput.py); each is profiled in turn (default: %(default)s)")
    p.add_argument("--fast", type=float, default=0.005, help="schedule scale of the profiled run (default %(default)s)")
    p.add_argument("--timed-fast", type=float, default=0.01,
                   help="schedule scale of the timed run without the profiler (default %(default)s)")
    p.add_argument("--warmup-fast", type=float, default=0.002)
    p.add_argument("--no-timed", action="store_true", help="skip the timed run (only the warm-up, if any)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run too (the CPU test)")
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining settings after this long")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applies to every setting")
    p.add_argument("--trace", default=None, help="also write a Chrome trace per setting (<trace>.k<K>.json; large)")
    p.add_argument("--json", default=None,
                   help="the JSON report (default: a new bench/results/profile_step_<device>_<UTC time>.json)")
    args = p.parse_args(argv)
    args.json = args.json or report_path("profile_step", args.device)
    t0 = time.perf_counter()
    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    bundle, gan_overrides = bench_bundle(args.gan, args.preset, args.size)
    common = {**gan_overrides, **parse_assignments(args.set)}
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "device": args.device,
                          "gpu": torch.cuda.get_device_name() if device_kind == "cuda" else None},
              "preset": args.preset, "gan": args.gan, "fast": args.fast, "timed_fast": args.timed_fast,
              "set": args.set, "labels": list(LABELS), "warnings": [], "runs": [], "skipped": []}

    def save():
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))

    labeller = Labeller().install()  # before any reconstructor: compiled graphs are traced through the wrappers
    report["warnings"] = labeller.warnings
    failed = False
    try:
        for text in args.settings:
            if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
                report["skipped"].append(text)
                print(f"skipped {text}: over the {args.budget_s:.0f}s budget", flush=True)
                continue
            k, overrides = parse_setting(text)
            overrides = {**common, **overrides}
            run: dict[str, Any] = {"setting": text, "k": k, "overrides": overrides}
            try:
                timed = None
                if args.no_warmup:
                    pass
                elif args.no_timed:
                    warm_up(bundle, args, k, overrides)
                else:  # step_throughput's own measurement: a warm-up run, then the timed one
                    timed = measure(bundle, SimpleNamespace(device=args.device, preset=args.preset,
                                                            warmup_fast=args.warmup_fast, fast=args.timed_fast),
                                    k, overrides)
                    print(f"{text}: timed run {timed['seconds_at_fast']:.1f}s at fast {args.timed_fast}, "
                          f"full schedule {timed['instances_per_hour_full']:.3g} inst/h", flush=True)
                summary = profiled_run(bundle, args, k, overrides, labeller)
                fits_prior = summary.pop("fits_prior")
                counts = full_counts(args.preset, overrides, fits_prior)
                sched = schedule_view(summary, summary["iterations"], counts, timed) if labeller.has_steps else None
                run.update(timed=timed, profile=summary, schedule=sched, full_counts=counts)
                problems = check_labels(summary)
                run["problems"] = problems
                print_tables(text, summary, sched, device_kind)
                for problem in problems:
                    print(f"ERROR: {problem}", flush=True)
                failed = failed or bool(problems)
            except ProfileSetupError:
                raise
            except Exception as exc:  # one setting failing (e.g. out of memory) must not lose the others
                run["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{text}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                failed = True
                gc.collect()
                if device_kind == "cuda":
                    torch.cuda.empty_cache()
            report["runs"].append(run)
            save()
    finally:
        labeller.restore()
    save()
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {args.json}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
