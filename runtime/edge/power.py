"""Edge energy: a power meter read in a background thread during the measured part of ``run-edge``.

Sources (``--power``), each read from the kernel's own files (no new dependency):

* ``ina3221``: the INA3221 power monitors of a Jetson, in either driver's layout.
  JetPack 4's ``ina3221x`` (``sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device*/``:
  ``rail_name_N``, ``in_power{N}_input`` in mW, else ``in_voltage{N}_input`` mV x
  ``in_current{N}_input`` mA) and JetPack 5's hwmon ``ina3221``
  (``sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/``: ``in{N}_label``,
  ``in{N}_input`` mV x ``curr{N}_input`` mA).  Channels labelled ``NC``, channel 7
  (``sum of shunt voltages``) and channels without a current are skipped.  Where the
  module has a total rail (``VDD_IN``: TX2, Xavier NX, Orin; ``POM_5V_IN``: Nano) that
  rail alone is the reading; where it has none (AGX Xavier: GPU, CPU, SOC, CV, VDDRQ,
  SYS5V on two devices) the sum of every rail is, named ``GPU+CPU+...``.
* ``jtop``: jetson-stats' ``jtop`` client, when importable and its service answers
  (its total, ``power['tot']['power']`` mW).  It reads the host's own sensors, so
  ``auto`` tries it only with the default ``--sysfs-root /``.
* ``rapl``: Intel/AMD RAPL for x86 edges, ``sys/class/powercap/<intel|amd>-rapl:N/``
  ``energy_uj`` (a counter in uJ that wraps at ``max_energy_range_uj``); ``psys``
  (the platform) where there is one, else every ``package-N`` zone, summed.
  Sub-zones (``:N:M``) and the MMIO duplicate (``intel-rapl-mmio``) are never added.

``auto`` takes the first readable of ina3221 (either layout), jtop, rapl; with none
the run goes on and reports ``energy: not measured (why)``.  A source the user named
that is not readable stops the run before it starts (``UserError``).  Every source is
opened by reading it once, so an unreadable or malformed file is found then.

``Sampler`` reads the meter every ``interval_s`` in a daemon thread, plus once in the
caller's thread at ``start()`` and at ``stop()``, so the window is the whole span
between them.  Each reading is timestamped at the middle of the read.  A power source
integrates mW over time with the trapezoid rule (mW x s = mJ); RAPL differences its
counter per zone, adding the zone's range when the counter went down (one wrap; at
20 ms a zone cannot wrap twice between readings).  A reading that fails (a file gone,
unreadable, not a number) is skipped; ``MAX_FAILURES`` in a row end the window with
``problem`` set to that reason (a rail that disappeared), and the energy is then not
reported.

The idle baseline (``measure_idle``) is the same sampler over ``IDLE_S`` seconds just
before the measured part (after the warm-up; with ``--start-at``, the last ``IDLE_S``
before that start), with the edge doing nothing.  ``energy_summary`` reports the
average power of the measured part, the idle power, and per sample the energy above
idle: (energy - idle power x duration) / samples, floored at 0 (a run that drew less
than the baseline, within the meter's noise, costs nothing measurable);
``gross_mj_per_sample`` keeps the energy without the subtraction.

Python 3.6 syntax, standard library only: this module runs on the Jetson.
"""
import glob
import os
import re
import threading
import time

from runtime.errors import UserError

SOURCES = ("auto", "ina3221", "jtop", "rapl", "none")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # a module's input rail: everything the module draws
SHUNT_SUM_CHANNEL = 7                  # JetPack 5 hwmon: "sum of shunt voltages", not a rail
IDLE_S = 0.5
INTERVAL_S = 0.02
MAX_FAILURES = 3
ADVICE = ("give --power auto (measure where possible) or none, or --sysfs-root DIR where the host's sysfs is "
          "mounted")


class MeterError(Exception):
    """A reading that could not be taken, in one line (which file, and why)."""


def _read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MeterError("{}: {}".format(path, getattr(exc, "strerror", None) or exc))


def _read_number(path):
    text = _read_text(path)
    try:
        return float(text.split()[0])  # some drivers append a unit ("32760 ma")
    except (ValueError, IndexError):
        raise MeterError("{}: not a number ({!r})".format(path, text[:40]))


def sys_dir(sysfs_root="/"):
    """The sysfs directory under ``sysfs_root``: ``ROOT/sys``, or ROOT itself when it is a sysfs (has bus/, class/)."""
    nested = os.path.join(sysfs_root, "sys")
    if os.path.isdir(nested):
        return nested
    if os.path.isdir(os.path.join(sysfs_root, "bus")) or os.path.isdir(os.path.join(sysfs_root, "class")):
        return sysfs_root
    return nested


class Meter(object):
    """A readable source: ``read()`` gives mW (power sources) or a tuple of uJ counters (``cumulative``)."""

    measured = True
    cumulative = False

    def __init__(self, source, rail, named=False):
        self.source, self.rail, self.named = source, rail, named

    def read(self):
        raise NotImplementedError

    def energy_mj(self, before, after, seconds):
        """The energy between two readings ``seconds`` apart: the trapezoid of their power."""
        return (before + after) / 2.0 * seconds

    def close(self):
        pass

    def describe(self):
        return "source {} rail {}".format(self.source, self.rail)


class NotMeasured(object):
    """No source: ``reason`` says why (``--power none``, or none readable with ``auto``)."""

    measured = False
    source = None
    rail = None

    def __init__(self, reason, named=False):
        self.reason, self.named = reason, named

    def close(self):
        pass


class _Rails(Meter):
    """INA3221 rails: ``channels`` is [(name, callable giving mW)]; the reading is their sum."""

    def __init__(self, source, channels, named=False):
        Meter.__init__(self, source, "+".join(name for name, _ in channels), named)
        self.channels = channels

    def read(self):
        total = 0.0
        for name, reader in self.channels:
            try:
                total += reader()
            except MeterError as exc:
                raise MeterError("rail {}: {}".format(name, exc))
        return total


class _Rapl(Meter):
    """RAPL zones: ``zones`` is [(name, energy_uj path, max_energy_range_uj)]; readings are counters."""

    cumulative = True

    def __init__(self, zones, named=False):
        Meter.__init__(self, "rapl", "+".join(name for name, _, _ in zones), named)
        self.zones = zones

    def read(self):
        return tuple(_read_number(path) for _, path, _ in self.zones)

    def energy_mj(self, before, after, seconds):
        total_uj = 0.0
        for (_, _, wrap), b, a in zip(self.zones, before, after):
            total_uj += a - b if a >= b else a + wrap - b
        return total_uj / 1000.0


class _Jtop(Meter):
    """jetson-stats' client: its total power (mW), as its service last sampled it."""

    def __init__(self, client, rail, named=False):
        Meter.__init__(self, "jtop", rail, named)
        self.client = client

    def read(self):
        total = _jtop_total(self.client.power)
        if total is None:
            raise MeterError("jtop gives no total power")
        return total

    def close(self):
        try:
            self.client.close()
        except Exception:  # a client that is gone has nothing to close
            pass


def _jtop_total(power):
    """mW from ``jtop.power``: 4.x gives {'rail': ..., 'tot': {'power': mW}}, 3.x (total {'cur': mW}, rails)."""
    if isinstance(power, dict):
        tot = power.get("tot") or {}
        value = tot.get("power")
    elif isinstance(power, (tuple, list)) and power and isinstance(power[0], dict):
        value = power[0].get("cur")
    else:
        value = None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# -- discovery: each returns (Meter or None, reason) -------------------------------------------------------------

def _number_suffix(path, pattern):
    match = re.match(pattern, os.path.basename(path))
    return int(match.group(1)) if match else None


def _skipped(label, number=None):
    return label.upper() in ("", "NC") or label.lower().startswith("sum of shunt") or number == SHUNT_SUM_CHANNEL


def _power_file(path):
    return lambda: _read_number(path)


def _product(volt_path, curr_path):
    return lambda: _read_number(volt_path) * _read_number(curr_path) / 1000.0


def _labelled(pattern, label_regex):
    """(directory, channel number, label) of every channel's label file matching ``pattern`` (under a sysfs), in
    directory and channel order."""
    for directory in sorted(glob.glob(os.path.dirname(pattern))):
        labels = glob.glob(os.path.join(directory, os.path.basename(pattern)))
        for label_path in sorted(labels, key=lambda p: _number_suffix(p, label_regex) or 0):
            n = _number_suffix(label_path, label_regex)
            if n is not None:
                yield directory, n, _read_text(label_path)


def _ina3221x_channels(sysfs):
    """JetPack 4's ina3221x: [(rail, reader)] over every iio device, in bus/address and channel order."""
    channels = []
    for device, n, name in _labelled(os.path.join(sysfs, "bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*"),
                                     r"rail_name_(\d+)$"):
        if _skipped(name):
            continue
        power = os.path.join(device, "in_power{}_input".format(n))
        if os.path.exists(power):
            channels.append((name, _power_file(power)))
        else:
            channels.append((name, _product(os.path.join(device, "in_voltage{}_input".format(n)),
                                            os.path.join(device, "in_current{}_input".format(n)))))
    return channels


def _ina3221_channels(sysfs):
    """JetPack 5's hwmon ina3221: [(rail, reader)], power = bus voltage (mV) x current (mA)."""
    channels = []
    for hwmon, n, name in _labelled(os.path.join(sysfs, "bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"),
                                    r"in(\d+)_label$"):
        current = os.path.join(hwmon, "curr{}_input".format(n))
        if _skipped(name, n) or not os.path.exists(current):
            continue
        channels.append((name, _product(os.path.join(hwmon, "in{}_input".format(n)), current)))
    return channels


def _total_or_all(channels):
    """The module's total rail where it has one, else every rail (summed by the meter)."""
    for total in TOTAL_RAILS:
        for name, reader in channels:
            if name == total:
                return [(name, reader)]
    return channels


def _open_ina3221(sysfs):
    drivers = os.path.join(sysfs, "bus/i2c/drivers")
    tried = []
    for source, find in (("ina3221x", _ina3221x_channels), ("ina3221", _ina3221_channels)):
        if not os.path.isdir(os.path.join(drivers, source)):
            continue
        try:
            channels = find(sysfs)
        except MeterError as exc:
            tried.append("{} unreadable: {}".format(source, exc))
            continue
        if not channels:
            tried.append("{} has no connected rail".format(os.path.join(drivers, source)))
            continue
        meter = _Rails(source, _total_or_all(channels))
        reason = _first_reading(meter)
        if reason is None:
            return meter, None
        tried.append("{} unreadable: {}".format(source, reason))
    if not tried:
        return None, "no INA3221 power monitor in {} (ina3221x, ina3221)".format(drivers)
    return None, "; ".join(tried)


def _first_reading(meter):
    """None when the meter reads now, else why not."""
    try:
        meter.read()
    except MeterError as exc:
        return str(exc)
    return None


def _rapl_zones(sysfs):
    """[(name, energy_uj path, range)] of the top-level zones to add: psys where there is one, else packages."""
    zones = {}
    for zone in sorted(glob.glob(os.path.join(sysfs, "class/powercap/*"))):
        if re.match(r"^[a-z]+-rapl:\d+$", os.path.basename(zone)) and os.path.exists(os.path.join(zone, "name")):
            zones[zone] = _read_text(os.path.join(zone, "name"))
    psys = [z for z, name in zones.items() if name == "psys"]
    chosen = psys[:1] or [z for z, name in sorted(zones.items()) if name.startswith("package")]
    return [(zones[z], os.path.join(z, "energy_uj"), _read_number(os.path.join(z, "max_energy_range_uj")))
            for z in chosen]


def _open_rapl(sysfs):
    powercap = os.path.join(sysfs, "class/powercap")
    try:
        zones = _rapl_zones(sysfs)
    except MeterError as exc:
        return None, "RAPL unreadable: {}".format(exc)
    if not zones:
        return None, "no RAPL package counter in {}".format(powercap)
    meter = _Rapl(zones)
    reason = _first_reading(meter)
    if reason is not None:
        return None, "RAPL unreadable: {} (energy_uj is root-only since Linux 5.10)".format(reason)
    return meter, None


def _open_jtop(sysfs):
    try:
        from jtop import jtop
    except ImportError:
        return None, "jtop is not installed (jetson-stats)"
    except Exception as exc:  # a broken install is a reason, not a crash
        return None, "jtop does not import: {}".format(_first_line(exc))
    try:
        client = jtop()
        client.start()
    except Exception as exc:  # jtop raises its own JtopException when its service is absent
        return None, "jtop's service does not answer ({}; sudo systemctl restart jtop.service)".format(
            _first_line(exc))
    power = client.power
    total = _jtop_total(power)
    if total is None:
        client.close()
        return None, "jtop gives no total power"
    name = power.get("tot", {}).get("name") if isinstance(power, dict) else None
    return _Jtop(client, name or "total"), None


def _first_line(exc):
    return (str(exc).splitlines() or [type(exc).__name__])[0]


OPENERS = {"ina3221": _open_ina3221, "jtop": _open_jtop, "rapl": _open_rapl}


def open_meter(source="auto", sysfs_root="/"):
    """A Meter for ``source``; with "auto" the first readable of ina3221 (either layout), jtop, rapl; a
    NotMeasured(reason) where source is "auto" and none is readable, or "none"; raises UserError (one line: what
    is missing and what to do) where the user named a source that is not readable here."""
    if source not in SOURCES:
        raise UserError("--power must be one of {}".format(", ".join(SOURCES)))
    if source == "none":
        return NotMeasured("--power none")
    named = source != "auto"
    sysfs = sys_dir(sysfs_root)
    reasons = []
    for name in ((source,) if named else ("ina3221", "jtop", "rapl")):
        if name == "jtop" and not named and os.path.realpath(sysfs_root) != "/":
            reasons.append("jtop not tried (it reads the host's sensors, not --sysfs-root)")
            continue
        meter, reason = OPENERS[name](sysfs)
        if meter is not None:
            meter.named = named
            return meter
        reasons.append(reason)
    if named:
        raise UserError("--power {}: {}; {}".format(source, reasons[0], ADVICE))
    return NotMeasured("; ".join(reasons))


# -- sampling ----------------------------------------------------------------------------------------------------

class Window(object):
    """What a Sampler measured: ``duration_s`` between its first and last good reading, ``energy_mj`` over it,
    ``samples`` (the readings), ``problem`` (None, or why the window ended early: its energy is not reported)."""

    def __init__(self, source, rail, duration_s=0.0, energy_mj=0.0, samples=0, problem=None):
        self.source, self.rail = source, rail
        self.duration_s, self.energy_mj, self.samples, self.problem = duration_s, energy_mj, samples, problem

    @property
    def avg_power_mw(self):
        """mJ / s = mW; None for a window of no length."""
        return self.energy_mj / self.duration_s if self.duration_s > 0 else None


class Sampler(object):
    """Reads ``meter`` every ``interval_s`` in a daemon thread between ``start()`` and ``stop()``."""

    def __init__(self, meter, interval_s=INTERVAL_S):
        self.meter, self.interval_s = meter, interval_s
        self._stop = threading.Event()
        self._thread = None
        self._first = self._last = None  # (time, reading)
        self._energy, self._samples, self._failures, self._problem = 0.0, 0, 0, None

    def start(self):
        self._tick()
        self._thread = threading.Thread(target=self._run, name="edge-power", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while self._problem is None and not self._stop.wait(self.interval_s):
            self._tick()

    def _tick(self):
        t0 = time.perf_counter()
        try:
            reading = self.meter.read()
        except MeterError as exc:
            self._failures += 1
            if self._failures >= MAX_FAILURES:
                self._problem = str(exc)
            return
        now = (t0 + time.perf_counter()) / 2.0
        self._failures = 0
        if self._last is None:
            self._first = (now, reading)
        else:
            self._energy += self.meter.energy_mj(self._last[1], reading, now - self._last[0])
        self._last = (now, reading)
        self._samples += 1

    def stop(self):
        """End the window (a last reading now) and return it as a Window."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._problem is None:
            self._tick()
        if self._problem is None and self._last is None:
            self._problem = "no reading could be taken"
        duration = self._last[0] - self._first[0] if self._last is not None else 0.0
        return Window(self.meter.source, self.meter.rail, duration, self._energy, self._samples, self._problem)


def measure_idle(meter, seconds=IDLE_S, interval_s=INTERVAL_S):
    """The idle baseline: the meter over ``seconds`` with nothing else running (just before the measured part)."""
    sampler = Sampler(meter, interval_s).start()
    time.sleep(seconds)
    return sampler.stop()


def not_measured(reason, source=None, rail=None):
    """The report's ``energy`` where there is none: the same keys, null, and why."""
    return {"measured": False, "reason": reason, "source": source, "rail": rail, "avg_power_mw": None,
            "idle_power_mw": None, "mj_per_sample": None, "gross_mj_per_sample": None, "duration_s": None,
            "readings": None}


def energy_summary(window, idle, samples):
    """The report's ``energy``: source, rail, average and idle power (mW), and per sample the energy above the idle
    baseline (mJ, floored at 0) and without it (``gross_mj_per_sample``); ``not_measured`` where a window had a
    problem, no length, or there was no sample."""
    for which, w in (("idle baseline", idle), ("measured part", window)):
        if w.problem is not None:
            return not_measured("{} ({})".format(w.problem, which), window.source, window.rail)
        if w.avg_power_mw is None:
            return not_measured("the {} was too short to measure".format(which), window.source, window.rail)
    if samples < 1:
        return not_measured("no sample was measured", window.source, window.rail)
    above = window.energy_mj - idle.avg_power_mw * window.duration_s
    return {"measured": True, "reason": None, "source": window.source, "rail": window.rail,
            "avg_power_mw": window.avg_power_mw, "idle_power_mw": idle.avg_power_mw,
            "mj_per_sample": max(above, 0.0) / samples, "gross_mj_per_sample": window.energy_mj / samples,
            "duration_s": window.duration_s, "readings": window.samples}


class RunEnergy(object):
    """The measured part's energy for ``measure``: the idle baseline, then a Sampler from ``start`` to ``stop``."""

    def __init__(self, meter, idle_s=IDLE_S, interval_s=INTERVAL_S):
        self.meter, self.idle_s, self.interval_s = meter, idle_s, interval_s
        self.idle = self.window = self._sampler = None

    def before(self, start_at=None):
        """Just before the measured part: the idle baseline (with ``start_at``, a wall-clock start ahead, over the
        last ``idle_s`` before it)."""
        if not self.meter.measured:
            return
        if start_at is not None and start_at - self.idle_s > time.time():
            time.sleep(start_at - self.idle_s - time.time())
        self.idle = measure_idle(self.meter, self.idle_s, self.interval_s)

    def start(self):
        if self.meter.measured:
            self._sampler = Sampler(self.meter, self.interval_s).start()

    def stop(self):
        if self._sampler is not None and self.window is None:
            self.window = self._sampler.stop()

    def summary(self, samples):
        if not self.meter.measured:
            return not_measured(self.meter.reason)
        if self.window is None or self.idle is None:
            return not_measured("the measured part did not run", self.meter.source, self.meter.rail)
        return energy_summary(self.window, self.idle, samples)
