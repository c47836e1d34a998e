"""Every device type c8ysim simulates, one entry each: the registry the rest reads.

An entry says what the YAML may set for the type (its `type:` name and the parameters under
`<type>:`, with defaults), what Cumulocity sees (the device and measurement type), where its
model lives (a class in `c8ysim.sim`, imported by the device child only) and how the status
page shows its power. The config loader, the supervisor and the status page read this table
without importing the simulation; the models read their parameter defaults from it.

Adding a type: one `Kind` in `KINDS`, its model class (`c8ysim/sim/`), and its docs.
A leaf module: it imports nothing from c8ysim.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple


class Kind(NamedTuple):
    name: str  # the YAML `type:` and the key of the device's own parameters
    c8y_type: str  # the managed object's type, also the type of its measurements
    model: str  # "module:Class" of its model; the class's step() makes the readings
    params: Mapping[str, float]  # the parameters the YAML may set, with their defaults
    tile: str  # its share of the site summary on the status page ("PV now")
    words: tuple[str, str]  # the power phrase when the shown power is >= 0, < 0
    tile_words: tuple[str, str] = ("", "")  # added to the tile's label by sign
    shown_sign: int = 1  # -1: show the power turned round (a generator's output positive)
    site_wide: bool = False  # its readings add up the household's other devices
    faults: tuple[str, ...] = ()  # what `fault <name>` may break (besides comms_loss)

    def shown_power(self, watts: float) -> float:
        """Power as the status page shows it (`watts`: + drawn from the grid side)."""
        return self.shown_sign * watts

    def word(self, shown_watts: float) -> str:
        return self.words[0] if shown_watts >= 0 else self.words[1]


KINDS: Mapping[str, Kind] = MappingProxyType({kind.name: kind for kind in (
    # An inverter above three_phase_above_kw is three-phase (VDE-AR-N 4105: at most 4.6 kVA
    # on one phase), else single-phase on `phase` (1-3).
    Kind("pv", "c8ysim_PvInverter", "c8ysim.sim.devices:PvModel",
         {"peak_kw": 5.0, "tilt_deg": 30.0, "azimuth_deg": 180.0, "inverter_kw": 4.6,
          "three_phase_above_kw": 4.6, "phase": 1.0},
         tile="PV", words=("generating", "drawing"), shown_sign=-1,
         faults=("inverter_trip",)),
    # `phases`: 3 (a balanced three-phase compressor) or 1 (on `phase`, 1-3).
    Kind("heatpump", "c8ysim_HeatPump", "c8ysim.sim.devices:HeatPumpModel",
         {"rated_kw": 3.0, "building_kwh_per_year": 12000.0, "phases": 3.0, "phase": 1.0},
         tile="heat pump", words=("drawing", "delivering"), faults=("compressor_fault",)),
    Kind("grid", "c8ysim_GridMeter", "c8ysim.sim.devices:GridMeterModel", {},
         tile="grid", words=("importing", "exporting"), tile_words=("import", "export"),
         site_wide=True, faults=("outage",)),
)})

# The household's own load (not a device): parameters under `household:` in the YAML.
HOUSEHOLD_PARAMS: Mapping[str, float] = MappingProxyType({"kwh_per_year": 4000.0})
