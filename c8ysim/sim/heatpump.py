"""Air/water heat pump: heat demand, COP, modulation, on/off cycling, hot water, defrost.

Owns the heat-pump physics. Electrical input is a pure function of (site, spec, t):

- Space heating demand Q = UA * max(0, HEATING_LIMIT_C - T_daily), with T_daily the
  weather's daily mean (no diurnal swing): the building's thermal mass smooths the day,
  and like a real controller's summer mode, heating stops on warm days, not warm
  afternoons. UA is derived so that a mean year of this site's own climate needs
  `building_kwh_per_year` of space heat: UA = building_kwh_per_year / DH, where DH sums
  over the 8760 hours of a reference year E[max(0, T_limit - T_daily)], T_daily = the
  seasonal mean m plus Gaussian synoptic noise of SD s, i.e. m'*Phi(m'/s) + s*phi(m'/s)
  with m' = T_limit - m. Berlin, 15 C limit: DH ~ 56 000 K h, so the default 12 000 kWh
  gives UA ~ 0.22 kW/K (~5.5 kW of heat at -10 C). While running, the unit delivers 10 %
  more than Q to make up for the hot-water and defrost pauses (~10 % of winter run
  time), so a year delivers building_kwh_per_year of space heat. Hot water is on top.
- Weather-compensated flow temperature clamp(45 - 1.2 * T_out, 30, 55) and COP from the
  generic regression 0.154 T_air - 0.0876 T_flow + 7.045, clamped to [COP_MIN, COP_MAX]
  (the regression falls below 2 at cold air and high flow, outside its fitted range),
  both on the instantaneous air temperature.
- P = Q / COP, clipped to [minimum modulation, rated]. Below the minimum the unit cycles:
  fixed 50-minute cycle slots (per-device seeded phase); in each slot it runs at minimum
  modulation for duty * 50 min, clamped to 20..40 min (so off is 10..30 min), with the duty
  taken from the demand at the slot start. A duty below 20 min runs a 20-minute cycle
  with probability on/20min (seeded per slot), which keeps the mean energy right; the
  skipped slots make the long pauses of a barely heating house.
- Hot water: a morning cycle every day (05:00-06:30 local start) and an evening cycle on
  60 % of days (16:30-18:30), 30-50 min at 60 % of rated power and 55 C flow; space
  heating pauses meanwhile.
- Defrost (outdoor -7..+5 C, compressor running): in each UTC hour with probability 0.6, a
  4-8 minute reverse cycle; electrical power dips to 70 %, flow temperature by 6 K and
  no heat is delivered. The device model reports its start as an Event.
- Return temperature: a fixed-speed circulation pump moves the water at a flow that carries
  the unit's rated heat (rated_kw * DESIGN_COP) at DESIGN_SPREAD_K, so the return is
  flow - heat / (m c_p): ~1.5 K below the flow at part load, 5 K at full load, equal to it
  in standby (no heat), and warmer than the flow during a defrost (the water heats the coil).
- Standby (controller, circulation pump) 20-50 W, stepping every 10 minutes.

Faults (`c8ysim.site.Scenario`, read through `scenarios.Windows`), a pure function of t:

- During its own `compressor_fault` the unit draws standby power only, delivers no heat
  and reports COP 0 (mode "fault"); during a grid `outage` (the grid meter's fault) it has
  no power at all: 0 W, not even standby (mode "off"). Meanwhile the water in the circuit
  cools from the flow set point towards the rooms (ROOM_C, time constant
  WATER_COOLING_S), flow = return; no hot-water cycle, no defrost.
- Catch-up: the house cooled meanwhile, so after such a window (start, end) the unit does
  not just resume: from `end` it runs at rated power (mode heating, weather-compensated
  flow) for `recovery_s(start, end)` = the space heat the building lost during the window,
  UA * max(0, HEATING_LIMIT_C - T_daily) summed over it (every 10 minutes), divided by the
  surplus rated power delivers at `end` over the building's demand there
  (rated * COP - UA * max(0, HEATING_LIMIT_C - T_daily)), at most RECOVERY_MAX_S (4 h;
  also when rated power does not even cover the demand). No heating demand (summer): no
  catch-up. Hot water and defrost take their turns as usual. Each window counts on its own
  (`Scenario.last_end` for a daily one): back-to-back windows each catch up from their own
  end, and a catch-up overlapped by the next window is not carried over.

Total for any finite input (issue 13, defect 10): the COP is a clamped linear regression
(no Carnot T_flow / (T_flow - T_air), so near-equal temperatures cannot blow it up), every
division has a denominator bounded away from 0, and ratings are capped (MAX_RATED_KW,
MAX_BUILDING_KWH_PER_YEAR) so that no product overflows to inf or inf * 0 = NaN.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from c8ysim.sim import DeviceSpec, Site
from c8ysim.sim.clock import LocalTime
from c8ysim.sim.noise import bounded_rating, clamp, stream_key, uniform
from c8ysim.sim.scenarios import COMPRESSOR_FAULT, OUTAGE, Windows, honoured
from c8ysim.sim.weather import SYNOPTIC_SD_C, Weather, WeatherModel, seasonal_mean_c
from c8ysim.site import FAULT

HEATING_LIMIT_C = 15.0
PAUSE_RECOVERY_FACTOR = 1.1  # running demand +10 %: makes up heat missed in hot-water/defrost pauses
FLOW_BASE_C, FLOW_SLOPE_K_PER_K, FLOW_MIN_C, FLOW_MAX_C = 45.0, 1.2, 30.0, 55.0
COP_AIR_PER_K, COP_FLOW_PER_K, COP_INTERCEPT = 0.154, -0.0876, 7.045
COP_MIN, COP_MAX = 2.0, 6.0
MIN_MODULATION_FRACTION = 0.3
CYCLE_SLOT_S, CYCLE_ON_MIN_S, CYCLE_ON_MAX_S = 50 * 60.0, 20 * 60.0, 40 * 60.0
STANDBY_MIN_W, STANDBY_MAX_W, STANDBY_STEP_S = 20.0, 50.0, 600.0
DHW_FLOW_TEMP_C, DHW_POWER_FRACTION = 55.0, 0.6
DHW_MIN_S, DHW_MAX_S = 30 * 60.0, 50 * 60.0
DHW_SLOTS_H = ((5.0, 1.5, 1.0), (16.5, 2.0, 0.6))  # (earliest start, spread, probability)
DEFROST_MIN_TEMP_C, DEFROST_MAX_TEMP_C = -7.0, 5.0
DEFROST_PROBABILITY_PER_HOUR = 0.6
DEFROST_MIN_S, DEFROST_MAX_S = 4 * 60.0, 8 * 60.0
DEFROST_POWER_FRACTION, DEFROST_FLOW_DROP_K = 0.7, 6.0
DESIGN_COP, DESIGN_SPREAD_K = 4.0, 5.0  # sizes the circulation flow (W of heat per K)
MAX_SPREAD_K = DESIGN_SPREAD_K * COP_MAX / DESIGN_COP  # full power at the best COP
REFERENCE_YEAR_START_S = 978307200.0  # 2001-01-01T00:00Z, a plain non-leap year
HOURS_PER_YEAR = 8760
MAX_RATED_KW = 1e6  # 1 GW; see pv.MAX_RATING_KW
MAX_BUILDING_KWH_PER_YEAR = 1e9  # a city's heat; keeps UA * degrees finite

RECOVERY_MAX_S = 4 * 3600.0  # catch-up after a fault: at most 4 h at rated power
RECOVERY_SAMPLE_S, RECOVERY_MAX_SAMPLES = 600.0, 144  # the missed heat, summed every 10 min
ROOM_C, WATER_COOLING_S = 20.0, 45 * 60.0  # the heating water cools towards the rooms

STANDBY, HEATING, HOT_WATER = "standby", "heating", "hot_water"
FAULT_MODE, OFF = "fault", "off"  # compressor fault (standby), grid outage (no power at all)


class HpOutput(NamedTuple):
    power_w: float       # electrical input
    heat_w: float        # thermal output (0 in standby and during defrost)
    cop: float           # COP of the current operating point (also reported in standby)
    flow_temp_c: float
    mode: str
    defrost: bool
    return_temp_c: float  # water coming back from the house


def flow_temperature_c(temp_out_c: float) -> float:
    return clamp(FLOW_BASE_C - FLOW_SLOPE_K_PER_K * temp_out_c, FLOW_MIN_C, FLOW_MAX_C)


def cop(temp_air_c: float, flow_temp_c: float) -> float:
    raw = COP_AIR_PER_K * temp_air_c + COP_FLOW_PER_K * flow_temp_c + COP_INTERCEPT
    return clamp(raw, COP_MIN, COP_MAX)


def _expected_shortfall(m: float, sd: float) -> float:
    """E[max(0, m + sd * Z)] for Z ~ N(0, 1)."""
    z = m / sd
    cdf = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return m * cdf + sd * pdf


@lru_cache(maxsize=64)
def annual_degree_hours_kh(latitude: float) -> float:
    """Expected heating degree hours (K h) below HEATING_LIMIT_C of the site's daily mean."""
    total = 0.0
    for hour in range(HOURS_PER_YEAR):
        t = REFERENCE_YEAR_START_S + (hour + 0.5) * 3600.0
        total += _expected_shortfall(HEATING_LIMIT_C - seasonal_mean_c(t, latitude), SYNOPTIC_SD_C)
    return total


def ua_w_per_k(building_kwh_per_year: float, latitude: float) -> float:
    degree_hours = annual_degree_hours_kh(latitude)  # > 0 at every latitude (~0.2 K h at 0 deg)
    if not degree_hours > 0.0:
        return 0.0
    return bounded_rating(building_kwh_per_year, MAX_BUILDING_KWH_PER_YEAR) * 1000.0 / degree_hours


class HeatPump:
    """One configured heat pump; `output(t, ...)` is its state at t."""

    def __init__(self, site: Site, spec: DeviceSpec, weather: WeatherModel):
        self.name, self.weather = spec.name, weather
        self.rated_w = bounded_rating(spec.param("rated_kw"), MAX_RATED_KW) * 1000.0
        self.min_w = self.rated_w * MIN_MODULATION_FRACTION
        self.flow_w_per_k = self.rated_w * DESIGN_COP / DESIGN_SPREAD_K  # circulation m * c_p
        self.ua_w_per_k = ua_w_per_k(spec.param("building_kwh_per_year"), site.latitude)
        key = lambda name: stream_key(site.seed, f"heatpump/{spec.name}/{name}")  # noqa: E731
        self._k_cycle, self._k_dhw = key("cycle"), key("hot-water")
        self._k_defrost, self._k_standby = key("defrost"), key("standby")
        self._cycle_phase_s = CYCLE_SLOT_S * uniform(key("cycle-phase"), 0)
        self._slot_memo: tuple[int | None, float] = (None, 0.0)
        self._dhw_memo: tuple[int | None, tuple[tuple[float, float], ...]] = (None, ())
        down = [s for s in honoured(site) if s.what == FAULT and (
            s.name == OUTAGE or (s.name == COMPRESSOR_FAULT and s.device == spec.name))]
        self._down = Windows(down, RECOVERY_MAX_S, site.timezone) if down else None
        self._recovery_memo: dict[tuple[float, float], float] = {}

    def heating_need_w(self, temp_out_c: float, daily_mean_c: float) -> float:
        """Electrical power the space-heating demand asks for, before modulation limits."""
        heat = self.ua_w_per_k * max(0.0, HEATING_LIMIT_C - daily_mean_c) * PAUSE_RECOVERY_FACTOR
        return heat / cop(temp_out_c, flow_temperature_c(temp_out_c))

    def output(self, t: float, weather: Weather, local: LocalTime) -> HpOutput:
        temp = weather.temp_c
        catching_up = False
        if self._down is not None and self._down.near(t):
            down = self._down_output(t, temp)
            if down is not None:
                return down
            catching_up = self.catching_up(t)
        if self.rated_w > 0.0 and self._hot_water(t, local):
            flow, running, mode = DHW_FLOW_TEMP_C, self.rated_w * DHW_POWER_FRACTION, HOT_WATER
        elif catching_up:
            flow, running, mode = flow_temperature_c(temp), self.rated_w, HEATING
        else:
            flow, running, mode = flow_temperature_c(temp), self._heating_w(t, weather), HEATING
        the_cop = cop(temp, flow)
        if running <= 0.0:
            return HpOutput(self._standby_w(t), 0.0, the_cop, flow, STANDBY, False, flow)
        heat = running * the_cop
        back = flow - self._spread_k(heat)
        if self._defrosting(t, temp):
            return HpOutput(running * DEFROST_POWER_FRACTION, 0.0, the_cop,
                            flow - DEFROST_FLOW_DROP_K, mode, True, back)
        return HpOutput(running, heat, the_cop, flow, mode, False, back)

    def power_w(self, t: float, weather: Weather, local: LocalTime) -> float:
        """`output(...).power_w` alone (what another device's phase balance needs)."""
        if self._down is not None and self._down.near(t):
            return self.output(t, weather, local).power_w
        if self.rated_w > 0.0 and self._hot_water(t, local):
            running = self.rated_w * DHW_POWER_FRACTION
        else:
            running = self._heating_w(t, weather)
        if running <= 0.0:
            return self._standby_w(t)
        if self._defrosting(t, weather.temp_c):
            return running * DEFROST_POWER_FRACTION
        return running

    def _down_output(self, t: float, temp_c: float) -> HpOutput | None:
        """The output while a compressor fault (standby) or a grid outage (nothing) holds t,
        else None. No heat, COP 0; the water in the circuit cools towards the rooms."""
        near = self._down.near(t)
        holding = [w for w in near if w.holds(t)]
        if not holding:
            return None
        start = holding[0].start  # the earliest: the windows come by start
        for w in reversed(near):  # back to back with an earlier window: down since its start
            if w.start < start <= w.end:
                start = w.start
        setpoint = flow_temperature_c(temp_c)
        water = ROOM_C + (setpoint - ROOM_C) * math.exp(-(t - start) / WATER_COOLING_S)
        if any(w.scenario.name == OUTAGE for w in holding):
            return HpOutput(0.0, 0.0, 0.0, water, OFF, False, water)
        return HpOutput(self._standby_w(t), 0.0, 0.0, water, FAULT_MODE, False, water)

    def catching_up(self, t: float) -> bool:
        """Whether the unit runs at rated power to make up for the heat a fault or an outage
        that ended before t kept from the house (`recovery_s`)."""
        if self._down is None or self.rated_w <= 0.0:
            return False
        return any(w.end <= t < w.end + self.recovery_s(w.start, w.end) for w in self._down.near(t))

    def recovery_s(self, start: float, end: float) -> float:
        """How long the unit runs at rated power after a window (start, end) without heat: the
        space heat the building lost meanwhile over what rated power delivers beyond the
        demand at the end, at most RECOVERY_MAX_S (remembered per window)."""
        key = (start, end)
        found = self._recovery_memo.get(key)
        if found is not None:
            return found
        samples = min(RECOVERY_MAX_SAMPLES, max(1, math.ceil((end - start) / RECOVERY_SAMPLE_S)))
        width = (end - start) / samples
        missed_j = sum(self._space_heat_w(start + (i + 0.5) * width) for i in range(samples)) * width
        temp, daily = self.weather.temperatures_c(end)
        surplus_w = (self.rated_w * cop(temp, flow_temperature_c(temp))
                     - self.ua_w_per_k * max(0.0, HEATING_LIMIT_C - daily))
        if not missed_j > 0.0:
            found = 0.0
        elif not surplus_w > 0.0:
            found = RECOVERY_MAX_S  # rated power does not even cover the demand
        else:
            found = min(RECOVERY_MAX_S, missed_j / surplus_w)
        if len(self._recovery_memo) >= 64:
            self._recovery_memo.clear()
        self._recovery_memo[key] = found
        return found

    def _space_heat_w(self, t: float) -> float:
        """The building's space-heating demand (W of heat) at t."""
        return self.ua_w_per_k * max(0.0, HEATING_LIMIT_C - self.weather.temperatures_c(t)[1])

    def _spread_k(self, heat_w: float) -> float:
        """Flow minus return (K) while delivering `heat_w`; 0 without a circulation flow."""
        spread = heat_w / self.flow_w_per_k if self.flow_w_per_k > 0.0 else 0.0
        return clamp(spread, 0.0, MAX_SPREAD_K) if math.isfinite(spread) else 0.0

    def _heating_w(self, t: float, weather: Weather) -> float:
        need = self.heating_need_w(weather.temp_c, weather.daily_mean_c)
        if need <= 0.0 or self.rated_w <= 0.0:
            return 0.0
        if need >= self.min_w:
            return min(need, self.rated_w)
        return self.min_w if self._cycle_on(t) else 0.0

    def _cycle_on(self, t: float) -> bool:
        slot = math.floor((t - self._cycle_phase_s) / CYCLE_SLOT_S)
        slot_start = slot * CYCLE_SLOT_S + self._cycle_phase_s
        return t - slot_start < self._slot_on_s(slot, slot_start)

    def _slot_on_s(self, slot: int, slot_start: float) -> float:
        """How long the unit runs in a cycle slot (0: it skips the slot). A pure function of
        the slot, remembered for the slot at hand (every tick of 50 minutes asks for it)."""
        if self._slot_memo[0] == slot:
            return self._slot_memo[1]
        duty = self.heating_need_w(*self.weather.temperatures_c(slot_start)) / self.min_w
        on_s = min(duty * CYCLE_SLOT_S, CYCLE_ON_MAX_S)
        if on_s < CYCLE_ON_MIN_S:
            on_s = 0.0 if uniform(self._k_cycle, slot) >= on_s / CYCLE_ON_MIN_S else CYCLE_ON_MIN_S
        self._slot_memo = (slot, on_s)
        return on_s

    def _hot_water(self, t: float, local: LocalTime) -> bool:
        day = math.floor((t + local.utc_offset_s) / 86400.0)
        second_of_day = local.hour * 3600.0
        for start, duration in self._hot_water_cycles(day):
            if start <= second_of_day < start + duration:
                return True
        return False

    def _hot_water_cycles(self, day: int) -> tuple[tuple[float, float], ...]:
        """(start, duration) of the day's hot-water cycles (seconds after local midnight),
        remembered for the day at hand."""
        if self._dhw_memo[0] == day:
            return self._dhw_memo[1]
        cycles = []
        for slot, (earliest_h, spread_h, probability) in enumerate(DHW_SLOTS_H):
            if uniform(self._k_dhw, day, 3 * slot + 1) >= probability:
                continue
            start = (earliest_h + spread_h * uniform(self._k_dhw, day, 3 * slot + 2)) * 3600.0
            duration = DHW_MIN_S + (DHW_MAX_S - DHW_MIN_S) * uniform(self._k_dhw, day, 3 * slot + 3)
            cycles.append((start, duration))
        self._dhw_memo = (day, tuple(cycles))
        return self._dhw_memo[1]

    def _defrosting(self, t: float, temp_out_c: float) -> bool:
        if not DEFROST_MIN_TEMP_C <= temp_out_c <= DEFROST_MAX_TEMP_C:
            return False
        hour = math.floor(t / 3600.0)
        if uniform(self._k_defrost, hour) >= DEFROST_PROBABILITY_PER_HOUR:
            return False
        duration = DEFROST_MIN_S + (DEFROST_MAX_S - DEFROST_MIN_S) * uniform(self._k_defrost, hour, 1)
        start = hour * 3600.0 + (3600.0 - duration) * uniform(self._k_defrost, hour, 2)
        return start <= t < start + duration

    def _standby_w(self, t: float) -> float:
        u = uniform(self._k_standby, math.floor(t / STANDBY_STEP_S))
        return STANDBY_MIN_W + (STANDBY_MAX_W - STANDBY_MIN_W) * u
