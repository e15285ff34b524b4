"""Synthetic training corpus: Brick point classes rendered in many vendor naming conventions.

No labeled point names from real buildings are used (the evaluation buildings must stay unseen).
Each sample takes one class, says its words the way building-automation vendors do (abbreviation
dictionaries typical of BAS/BMS naming, ISA-5.1 loop tags, dropped words, truncations, vowel
dropping), wraps them in equipment, room, controller and building ids, picks separators and a
case style, and sometimes adds a description, a unit and a datatype. Everything is drawn at
random, so the model has to learn what the words mean rather than one site's habit.
"""

from __future__ import annotations

import random
import re
from bisect import bisect
from collections.abc import Iterator, Sequence
from itertools import accumulate

from gateway.translator.tokenize import Point
from gateway.translator.vocab import BrickClass, aliases, brick_classes
from models.translator.prior import class_weights

# Word -> abbreviations seen in BAS/BMS point names (the full word is always possible too).
WORDS: dict[str, list[str]] = {
    "supply": ["sup", "sply", "supp", "s", "spl", "dis", "disch", "dischg"],
    "discharge": ["dis", "disch", "dischg", "dsch", "d", "sup"],
    "return": ["ret", "rtn", "r", "rt", "retn"],
    "outside": ["out", "outsd", "o", "outdoor", "od", "ext", "osa"],
    "outdoor": ["out", "od", "o", "outside"],
    "mixed": ["mix", "mxd", "m", "mixd"],
    "exhaust": ["exh", "ex", "e", "exhst"],
    "relief": ["rel", "rlf", "rlef"],
    "zone": ["zn", "z", "zon", "space", "spc", "rm"],
    "room": ["rm", "rom", "space", "spc", "zn", "r"],
    "air": ["a", "ar", "air"],
    "water": ["wtr", "w", "wat", "h2o"],
    "chilled": ["chw", "ch", "chld", "chill", "chl"],
    "hot": ["h", "ht", "hw"],
    "condenser": ["cond", "cnd", "cw", "cdw", "cndsr"],
    "domestic": ["dom", "dmstc", "d"],
    "leaving": ["lvg", "lv", "leav", "lvng", "supply", "sup", "s", "out"],
    "entering": ["ent", "entg", "en", "entr", "return", "ret", "r", "in"],
    "temperature": ["temp", "tmp", "t", "tem", "tmpr", "temperature", "tempr"],
    "humidity": ["hum", "rh", "humid", "hmd", "hu"],
    "relative": ["rel", "r"],
    "absolute": ["abs"],
    "pressure": ["press", "pres", "prs", "p", "pr", "prss"],
    "static": ["stat", "st", "sta", "s"],
    "differential": ["diff", "dp", "d", "dif", "delta"],
    "flow": ["flw", "fl", "flo", "f", "cfm", "gpm"],
    "fan": ["fn", "f", "fan"],
    "speed": ["spd", "sp", "spe", "vfd", "freq"],
    "valve": ["vlv", "vlve", "v", "valv", "vv"],
    "damper": ["dmpr", "dpr", "dmp", "dam", "damp", "d"],
    "position": ["pos", "posn", "pct", "%", "psn", "position"],
    "cooling": ["clg", "cool", "cl", "c", "cooling", "cln"],
    "heating": ["htg", "heat", "ht", "h", "hting"],
    "occupied": ["occ", "ocpd", "occpd", "o"],
    "unoccupied": ["unocc", "uocc", "unoc", "unocpd", "uo"],
    "occupancy": ["occ", "occup", "ocpncy", "pir", "presence"],
    "standby": ["stby", "stdby", "sby", "stb"],
    "enable": ["enbl", "en", "ena", "enab", "enb"],
    "disable": ["dsbl", "dis", "disab"],
    "power": ["pwr", "kw", "pow", "pw"],
    "energy": ["kwh", "nrg", "enrg", "egy", "energy"],
    "electric": ["elec", "el", "e", "elc"],
    "electrical": ["elec", "el"],
    "current": ["amps", "amp", "cur", "curr", "i", "a"],
    "voltage": ["volt", "volts", "v", "vlt"],
    "frequency": ["freq", "hz", "frq"],
    "level": ["lvl", "lev", "lv", "l"],
    "minimum": ["min", "mn", "lo"],
    "maximum": ["max", "mx", "hi"],
    "min": ["minimum", "mn", "lo"],
    "max": ["maximum", "mx", "hi"],
    "high": ["hi", "h", "hh", "hgh"],
    "low": ["lo", "l", "ll"],
    "run": ["rn", "running", "r", "run"],
    "start": ["strt", "str", "st"],
    "stop": ["stp", "sp"],
    "mode": ["md", "mod", "mde"],
    "override": ["ovrd", "ovr", "ovrrd", "ovrde", "or", "man", "hoa"],
    "load": ["ld", "lod"],
    "lighting": ["ltg", "light", "lt", "lgt", "lite", "lights"],
    # Lux is the unit of illuminance (light on a surface); luminance is cd/m2 (a surface's glow).
    "luminance": ["lum", "lumin", "bright"],
    "illuminance": ["lux", "illum", "lx", "lux lvl"],
    "filter": ["filt", "fltr", "flt", "fil"],
    "coil": ["cl", "coil", "cil"],
    "building": ["bldg", "bld", "bldng", "b"],
    "cooling_tower": ["ct"],
    "tower": ["twr", "tw"],
    "chiller": ["chlr", "ch", "chl", "chiller"],
    "boiler": ["blr", "boil", "b"],
    "pump": ["pmp", "p", "pmp"],
    "heat": ["ht", "h"],
    "exchanger": ["hx", "exch", "xchg"],
    "valve_position": ["vlv pos"],
    "setpoint": ["sp", "stpt", "spt", "setpt", "set", "sept", "stp", "setp"],
    "command": ["cmd", "cmnd", "c", "ctl", "ctrl", "out", "cmmd"],
    "status": ["sts", "stat", "st", "s", "state", "fb"],
    "alarm": ["alm", "alrm", "al", "alr", "alert"],
    "fault": ["flt", "fail", "failure", "err", "error", "ft"],
    "sensor": ["sens", "snsr", "sen", "sn", "pv"],
    "parameter": ["param", "prm", "par", "cfg"],
    "limit": ["lim", "lmt", "lmit"],
    "deadband": ["db", "dband", "dbnd"],
    "effective": ["eff", "effctv", "act", "actual", "active"],
    "average": ["avg", "ave", "av", "mean"],
    "usage": ["use", "usg", "consumption", "cons"],
    "demand": ["dmd", "dem", "dmnd"],
    "peak": ["pk", "peak"],
    "total": ["tot", "ttl", "sum"],
    "reset": ["rst", "rset", "rs"],
    "economizer": ["econ", "eco", "ecn", "economiser"],
    "emergency": ["emer", "emerg", "emg"],
    "shutdown": ["shtdn", "sd", "shut"],
    "smoke": ["smk", "smok"],
    "detection": ["det", "detect"],
    "freeze": ["frz", "frzstat", "fz"],
    "protect": ["prot", "prt"],
    "protection": ["prot", "prt"],
    "time": ["tm", "tim", "t"],
    "integral": ["int", "i", "integ"],
    "proportional": ["prop", "p", "pb"],
    "band": ["bnd", "bd"],
    "gain": ["gn", "k"],
    "derivative": ["der", "d", "deriv"],
    "enthalpy": ["enth", "h", "enthal"],
    "dewpoint": ["dp", "dewpt", "dwpt", "dew"],
    "dew": ["dw"],
    "point": ["pt", "pnt"],
    "carbon": ["co2", "c"],
    "dioxide": ["co2", "diox"],
    "monoxide": ["co", "monox"],
    "wind": ["wnd"],
    "direction": ["dir", "drctn"],
    "solar": ["sol", "slr"],
    "radiance": ["rad", "irr"],
    "irradiance": ["irr", "rad"],
    "open": ["opn", "op", "o"],
    "close": ["cls", "cl", "c"],
    "closed": ["cls", "clsd"],
    "on": ["on"],
    "off": ["off"],
    "tenant": ["tnt", "tenant"],
    "thermal": ["therm", "thrml"],
    "comfort": ["cmft", "cmf"],
    "ventilation": ["vent", "ventil"],
    "outside_air": ["oa"],
    "differential_pressure": ["dp"],
    "request": ["req", "rqst"],
    "lead": ["ld", "led"],
    "lag": ["lg"],
    "hand": ["hnd", "h"],
    "auto": ["aut", "a"],
    "active": ["act", "actv"],
    "reactive": ["react", "rct", "kvar"],
    "apparent": ["app", "appr", "kva"],
    "factor": ["fact", "fctr", "pf"],
    "phase": ["ph", "phs"],
    "angle": ["ang"],
    "battery": ["batt", "bat"],
    "generation": ["gen", "gnrt"],
    "photovoltaic": ["pv", "solar"],
    "refrigerant": ["refr", "ref", "rfg"],
    "natural": ["nat"],
    "gas": ["gs"],
    "steam": ["stm", "stem"],
    "rain": ["rn"],
    "motor": ["mtr", "mot", "m"],
    "drive": ["drv", "vfd"],
    "frost": ["frst"],
    "defrost": ["dfrst", "defr"],
    "capacity": ["cap", "capac"],
    "percent": ["pct", "%", "prcnt"],
    "medium": ["med", "md"],
    "hold": ["hld"],
    "schedule": ["sched", "schd", "sch"],
    "system": ["sys", "syst"],
    "enable_command": ["en"],
}

# Whole phrases with their own acronyms (ordered by length when matched).
PHRASES: dict[tuple[str, ...], list[str]] = {
    ("supply", "air", "temperature"): ["sat", "dat", "sa t", "sa temp", "dis air temp", "da temp"],
    ("discharge", "air", "temperature"): ["dat", "da t", "da temp", "disch temp", "sat"],
    ("return", "air", "temperature"): ["rat", "ra t", "ra temp", "ret temp", "rt"],
    ("mixed", "air", "temperature"): ["mat", "ma t", "ma temp", "mix temp"],
    ("outside", "air", "temperature"): ["oat", "osat", "oa t", "oa temp", "out temp", "odt"],
    ("exhaust", "air", "temperature"): ["eat", "ea t", "ea temp", "exh temp"],
    ("zone", "air", "temperature"): ["znt", "zn t", "zat", "zt", "zn temp", "space temp", "spc t"],
    ("room", "air", "temperature"): ["rmt", "rm t", "rm temp", "room temp", "space temp", "rt"],
    ("supply", "air"): ["sa", "da", "dis air", "sup air", "sa", "s a"],
    ("discharge", "air"): ["da", "dis air", "disch air", "sa"],
    ("return", "air"): ["ra", "ret air", "r a", "rtn air"],
    ("outside", "air"): ["oa", "osa", "oda", "out air", "o a"],
    ("mixed", "air"): ["ma", "mix air", "mxa"],
    ("exhaust", "air"): ["ea", "exh air", "exa"],
    ("relief", "air"): ["rla", "rel air", "rfa"],
    ("zone", "air"): ["zn", "za", "z", "zone"],
    ("chilled", "water"): ["chw", "ch w", "chwtr", "chill wtr", "cw"],
    ("hot", "water"): ["hw", "hwtr", "hot wtr", "hhw", "h w"],
    ("condenser", "water"): ["cw", "cdw", "cndw", "cond wtr", "cnw"],
    ("domestic", "hot", "water"): ["dhw", "dom hw"],
    ("leaving", "chilled", "water"): ["chws", "chwl", "lchw", "chw sup", "chw s"],
    ("entering", "chilled", "water"): ["chwr", "echw", "chwe", "chw ret", "chw r"],
    ("leaving", "hot", "water"): ["hws", "hwl", "hw sup", "hhws"],
    ("entering", "hot", "water"): ["hwr", "hwe", "hw ret", "hhwr"],
    ("leaving", "condenser", "water"): ["cws", "cwl", "lcw", "cdws"],
    ("entering", "condenser", "water"): ["cwr", "ecw", "cdwr"],
    ("supply", "fan"): ["sf", "sfan", "sup fan", "s fan"],
    ("return", "fan"): ["rf", "rfan", "ret fan"],
    ("exhaust", "fan"): ["ef", "efan", "exh fan"],
    ("static", "pressure"): ["sp", "stat press", "static pr", "st p", "sp"],
    ("differential", "pressure"): ["dp", "dpress", "diff press", "dpr", "dp"],
    ("relative", "humidity"): ["rh", "rel hum", "r h", "hum"],
    ("carbon", "dioxide"): ["co2", "co2", "c02"],
    ("carbon", "monoxide"): ["co"],
    ("variable", "frequency", "drive"): ["vfd", "vsd"],
    ("start", "stop"): ["ss", "s s", "start stop", "strt stp"],
    ("on", "off"): ["onoff", "o o", "on off"],
    ("air", "flow"): ["af", "cfm", "airflow", "air flw", "flow"],
    ("water", "flow"): ["gpm", "wf", "flow"],
    ("run", "status"): ["run sts", "rs", "run", "running", "run st"],
    ("fan", "status"): ["fan sts", "fs", "fan st"],
    ("cooling", "valve"): ["clg vlv", "cv", "chw vlv", "cool vlv", "clv"],
    ("heating", "valve"): ["htg vlv", "hv", "hw vlv", "heat vlv", "htv"],
    ("electric", "power"): ["kw", "pwr", "elec pwr"],
    ("active", "power"): ["kw", "p", "act pwr", "real pwr"],
    ("reactive", "power"): ["kvar", "q", "var"],
    ("apparent", "power"): ["kva", "s", "va"],
    ("electric", "energy"): ["kwh", "energy", "elec kwh"],
    ("active", "energy"): ["kwh", "wh", "energy"],
    ("power", "factor"): ["pf", "p f"],
    ("outside", "air", "damper"): ["oad", "oa dmpr", "oa dpr", "osa dmp"],
    ("return", "air", "damper"): ["rad", "ra dmpr", "ra dpr"],
    ("exhaust", "air", "damper"): ["ead", "ea dmpr"],
    ("mixed", "air", "damper"): ["mad", "ma dmpr"],
    ("temperature", "setpoint"): ["tsp", "t sp", "tstpt", "temp sp", "temp stpt"],
    ("cooling", "temperature", "setpoint"): ["csp", "clg sp", "clgsp", "cool sp", "clg stpt"],
    ("heating", "temperature", "setpoint"): ["hsp", "htg sp", "htgsp", "heat sp", "htg stpt"],
    ("occupied", "cooling"): ["occ clg", "oc clg", "occ cool"],
    ("occupied", "heating"): ["occ htg", "oc htg", "occ heat"],
    ("unoccupied", "cooling"): ["unocc clg", "uoc clg", "unocc cool"],
    ("unoccupied", "heating"): ["unocc htg", "uoc htg"],
    ("filter", "differential", "pressure"): ["filt dp", "fdp", "filter dp", "flt dp"],
    ("freeze", "status"): ["frzstat", "frz sts", "freezestat", "lt"],
    ("smoke", "detection"): ["smk det", "sd", "smoke det"],
    ("high", "limit"): ["hi lim", "hl", "hi lmt"],
    ("low", "limit"): ["lo lim", "ll", "lo lmt"],
    ("emergency", "shutdown"): ["esd", "emer sd", "e stop"],
    ("heat", "exchanger"): ["hx", "hex"],
    ("cooling", "tower"): ["ct", "clg twr"],
    ("dewpoint", "temperature"): ["dpt", "dewpt", "dp temp"],
    ("wet", "bulb", "temperature"): ["wbt", "wb temp", "wetbulb"],
    ("valve", "position"): ["vlv pos", "vp", "vlv", "valve pct", "vlv %"],
    ("damper", "position"): ["dmpr pos", "dpr pos", "dmpr", "dmp %", "dpos"],
    ("fan", "speed"): ["fan spd", "fspd", "spd", "fan vfd", "fan %"],
    ("occupancy", "status"): ["occ sts", "occ", "occupied", "occ st"],
    ("occupancy", "sensor"): ["occ sensor", "occ", "pir", "occ sns", "motion"],
    ("luminance", "sensor"): ["lum", "lumin", "brightness"],
    ("illuminance", "sensor"): ["lux", "light level", "lux level", "lx"],
    ("energy", "usage"): ["kwh", "energy", "consumption", "usage"],
}

# ISA-5.1 first letters (measured variable) by Brick quantity word.
ISA_LETTER: dict[str, str] = {
    "temperature": "T",
    "pressure": "P",
    "flow": "F",
    "level": "L",
    "humidity": "M",
    "speed": "S",
    "power": "J",
    "current": "I",
    "voltage": "E",
    "dioxide": "A",
    "position": "Z",
    "frequency": "S",
}

UNITS: dict[str, list[str]] = {
    "temperature": ["degF", "°F", "degC", "°C", "F", "C", "K", "deg F", "deg C"],
    "pressure": ["Pa", "kPa", "psi", "inH2O", "in. w.c.", "bar", "iwc", "psig"],
    "flow": ["cfm", "gpm", "l/s", "m3/h", "L/min", "CFM", "GPM"],
    "humidity": ["%RH", "%", "rh"],
    "speed": ["rpm", "%", "Hz"],
    "power": ["kW", "W", "MW"],
    "energy": ["kWh", "MWh", "Wh", "J"],
    "current": ["A", "amps", "mA"],
    "voltage": ["V", "kV", "volts"],
    "frequency": ["Hz"],
    "dioxide": ["ppm"],
    "position": ["%", "pct"],
    "luminance": ["cd/m2", "nit"],
    "illuminance": ["lux", "lx"],
    "level": ["%", "m", "ft"],
    "time": ["s", "sec", "min", "h"],
}

ANALOG_TYPES = ["float", "real", "analog", "float32", "double", "AI", "AV", "number", "REAL"]
BINARY_TYPES = ["bool", "boolean", "binary", "BI", "BV", "BO", "digital", "BOOL"]

TYPE_WORDS = {
    "sensor",
    "setpoint",
    "command",
    "status",
    "alarm",
    "parameter",
    "limit",
}

EQUIPMENT: dict[str, list[str]] = {
    "air": [
        "AHU",
        "AH",
        "VAV",
        "FCU",
        "RTU",
        "MAU",
        "DOAS",
        "ERV",
        "HRU",
        "UH",
        "CUH",
        "SF",
        "RF",
        "EF",
        "FC",
        "VVT",
        "TU",
        "CAV",
        "ACU",
        "CRAC",
        "HP",
        "SAF",
        "RAF",
    ],
    "water": [
        "CH",
        "CHLR",
        "CHL",
        "BLR",
        "B",
        "P",
        "CHWP",
        "HWP",
        "CWP",
        "CT",
        "HX",
        "PMP",
        "CHWS",
        "HWS",
        "PUMP",
        "CDWP",
    ],
    "elec": ["MTR", "EM", "PNL", "MCC", "LP", "DP", "SWBD", "ELEC", "UPS", "GEN", "PM", "MSB"],
    "light": ["LTG", "LC", "LP", "LZ", "LIGHT", "LT", "LCP"],
    "any": ["ZN", "Z", "RM", "FL", "FLR", "BLDG", "SYS", "PLANT", "UNIT", "U", "DEV", "EQ"],
}
CONTROLLERS = [
    "PXCM-{n2}",
    "NAE{n}",
    "DDC{n}",
    "N2-{n}",
    "dac{n}",
    "UIP{n2}",
    "AI{n}",
    "AV-{n}",
    "BO{n}",
    "NCE{n}",
    "CX{n}",
    "DEV{n3}",
    "FEC{n2}",
    "UI{n2}",
    "BI-{n}",
    "MS{n}",
    "VMA{n}",
    "NX{n}",
    "JACE{n}",
    "CPU{n}",
    "IO{n2}",
    "UO{n}",
    "PLC{n}",
    "ctl{n}",
    "{n3}",
]
ATTRIBUTES = [
    ":PRESENT_VALUE",
    ".PV",
    ".Value",
    "/present-value",
    ":TREND",
    ".pv",
    " PV",
    "_PV",
    ".value",
    ":PV",
    "/value",
    ".Present_Value",
    "#value",
]
SEPARATORS = ["_", "_", ".", "-", " ", "", "/", ":", "__"]

# Real names qualify generic points by the service or place they belong to ("CLG VLV" is a
# Valve_Position_Command of a cooling coil), words the Brick class itself does not carry.
SERVICE_QUALIFIERS = [
    "cooling",
    "heating",
    "chilled water",
    "hot water",
    "preheat",
    "reheat",
    "condenser water",
    "primary",
    "secondary",
    "bypass",
    "isolation",
    "outside air",
    "return air",
    "supply air",
    "exhaust",
    "steam",
    "lead",
    "lag",
    "stage 1",
    "stage 2",
    "min",
    "max",
]
SERVICE_WORDS = {"valve", "damper", "pump", "coil", "fan", "position", "speed", "motor", "drive"}
PLACE_QUALIFIERS = [
    "north",
    "south",
    "east",
    "west",
    "main",
    "lobby",
    "corridor",
    "1st floor",
    "2nd floor",
    "basement",
    "roof",
    "level 3",
    "wing b",
    "office",
    "lab",
    "conference",
    "kitchen",
]

# Plain-word synonyms operators use in descriptive names (Brick says supply, they say discharge).
SYNONYMS: dict[str, list[str]] = {
    "supply": ["discharge", "supply", "leaving", "sup", "disch"],
    "discharge": ["supply", "discharge", "disch"],
    "leaving": ["supply", "leaving", "outlet", "lvg"],
    "entering": ["return", "entering", "inlet", "ent"],
    "return": ["return", "ret", "entering"],
    "outside": ["outdoor", "outside", "ambient", "oa"],
    "zone": ["room", "space", "zone", "zn"],
    "room": ["zone", "space", "room", "rm"],
    "temperature": ["temp", "temperature", "temp.", "tmp"],
    "setpoint": ["set point", "setpoint", "sp", "stpt", "set-point", "setpt", "target", "spt"],
    "command": ["cmd", "command", "control", "output", "signal"],
    "status": ["status", "state", "sts", "feedback", "indication"],
    "alarm": ["alarm", "alm", "alert", "alarm status"],
    "position": ["position", "pos", "%", "percent open", "opening"],
    "valve": ["valve", "vlv"],
    "damper": ["damper", "dmpr"],
    "power": ["power", "kw", "real power"],
    "energy": ["energy", "kwh", "consumption", "usage"],
    "humidity": ["humidity", "rh"],
    "pressure": ["pressure", "press"],
    "flow": ["flow", "flow rate", "volume"],
    "speed": ["speed", "spd", "vfd speed"],
    "occupancy": ["occupancy", "occupied", "presence"],
    "luminance": ["luminance", "brightness"],
    "illuminance": ["light level", "lux", "illuminance", "lux level"],
    "lighting": ["lights", "lighting", "light"],
    "cooling": ["cooling", "clg", "cool"],
    "heating": ["heating", "htg", "heat"],
    "run": ["run", "running"],
    "on": ["on/off", "on"],
    "start": ["start/stop", "start"],
    "electric": ["electrical", "electric", ""],
    "chilled": ["chilled", "chw", "cold"],
    "sensor": ["sensor", "sensor", "reading", "measurement", "value"],
}
# Equipment and places written before descriptive names; they do not change the point's class.
DESC_EQUIPMENT: dict[str, list[str]] = {
    "air": [
        "fcu",
        "fan coil",
        "fan coil unit",
        "ahu",
        "air handler",
        "air handling unit",
        "vav",
        "vav box",
        "rtu",
        "rooftop unit",
        "unit ventilator",
        "doas",
        "crac",
        "heat pump",
    ],
    "water": [
        "chiller",
        "boiler",
        "pump",
        "chw pump",
        "hw pump",
        "cooling tower",
        "heat exchanger",
        "plant",
        "chw loop",
        "hw loop",
    ],
    "elec": [
        "meter",
        "sub meter",
        "submeter",
        "electric meter",
        "power meter",
        "panel",
        "main panel",
        "mcc",
        "ups",
        "lighting panel",
        "feeder",
    ],
    "light": ["lighting panel", "light", "lighting zone", "lights", "lighting controller"],
    "any": ["zone", "room", "floor", "building", "system", "unit", "controller"],
}
DESC_PLACES = [
    "room #",
    "rm #",
    "floor #",
    "level #",
    "#th floor",
    "north wing",
    "south wing",
    "bldg #",
    "suite #",
    "lab #",
    "office #",
]

_VOWELS = re.compile(r"(?<=.)[aeiou]")


def _domain(words: list[str]) -> str:
    w = set(words)
    if w & {"water", "chilled", "condenser", "steam", "pump", "chiller", "boiler"}:
        return "water"
    if w & {"electric", "electrical", "energy", "power", "current", "voltage", "phase"}:
        return "elec"
    if w & {"lighting", "luminance", "illuminance"}:
        return "light"
    if w & {"air", "zone", "room", "fan", "damper", "humidity", "dioxide"}:
        return "air"
    return "any"


def _num(r: random.Random) -> str:
    return str(r.choice([r.randint(1, 9), r.randint(1, 30), r.randint(1, 999)]))


def _fill(template: str, r: random.Random) -> str:
    return (
        template.replace("{n3}", str(r.randint(100, 9999)))
        .replace("{n2}", f"{r.randint(0, 99):02d}")
        .replace("{n}", str(r.randint(1, 40)))
    )


def _meaningful() -> frozenset[str]:
    """Every word and abbreviation the corpus gives a meaning to: never drawn as a site code."""
    out: set[str] = set()
    for key, forms in list(WORDS.items()) + list(PHRASES.items()):
        out.update(key if isinstance(key, tuple) else [key])
        out.update(f.lower() for form in forms for f in form.split())
    out.update(k.lower() for k in ISA_LETTER)
    return frozenset(out)


_MEANINGFUL = _meaningful()
_CODE_LETTERS = "bcdfghjklmnpqrstvwxzaeiou"


def site_code(r: random.Random) -> str:
    """An id written with a site's own letters (``RMI015``, ``scc2``, ``Qx-14``): teaches the
    model that an unknown code next to a number names a place or device, not a point class."""
    while True:
        letters = "".join(r.choice(_CODE_LETTERS) for _ in range(r.randint(2, 4)))
        if letters not in _MEANINGFUL:
            break
    letters = r.choice([letters.upper(), letters.lower(), letters.capitalize()])
    n = r.choice([str(r.randint(1, 9)), f"{r.randint(0, 999):03d}", str(r.randint(10, 9999))])
    return r.choice(["{c}{n}", "{c}{n}", "{c} {n}", "{c}-{n}", "{c}{n}{x}"]).format(
        c=letters, n=n, x=r.choice("ABCD")
    )


class Renderer:
    """Draws (point, class index) samples; one instance per worker, seeded."""

    def __init__(self, seed: int = 0) -> None:
        self.r = random.Random(seed)
        self.classes: tuple[BrickClass, ...] = brick_classes()
        by_canonical: dict[str, list[str]] = {}
        for alias, canon in aliases().items():
            by_canonical.setdefault(canon, []).append(alias)
        self.alias_names = by_canonical
        self.index = {c.name: i for i, c in enumerate(self.classes)}
        self.known_names = {c.name.lower() for c in self.classes} | {a.lower() for a in aliases()}
        self._cum: list[float] | None = None

    # -- the point itself -------------------------------------------------------------------
    def _word(self, w: str) -> str:
        r = self.r
        x = r.random()
        forms = WORDS.get(w)
        if forms and x < 0.55:
            return r.choice(forms)
        if x < 0.75 or len(w) <= 3:
            return w
        if x < 0.87:
            return w[: r.randint(2, min(5, len(w)))]
        return _VOWELS.sub("", w)

    def _core_tokens(self, words: list[str]) -> list[str]:
        r = self.r
        out: list[str] = []
        i = 0
        while i < len(words):
            for n in (3, 2):
                key = tuple(words[i : i + n])
                if len(key) == n and key in PHRASES and r.random() < 0.6:
                    out.extend(r.choice(PHRASES[key]).split())
                    i += n
                    break
            else:
                w = words[i]
                i += 1
                if w == "air" and r.random() < 0.35:
                    continue
                if w == "water" and r.random() < 0.2:
                    continue
                if len(words) > 2 and r.random() < 0.04:
                    continue  # a word the vendor left out
                out.append(self._word(w))
        return out

    def _type_token(self, w: str) -> str:
        r = self.r
        drop = {"sensor": 0.65, "command": 0.35, "status": 0.3, "alarm": 0.1, "setpoint": 0.07}
        if r.random() < drop.get(w, 0.15):
            return ""
        if r.random() < 0.3:
            return w
        return r.choice(WORDS.get(w, [w]))

    def _isa(self, words: list[str]) -> str | None:
        letter = next((ISA_LETTER[w] for w in words if w in ISA_LETTER), None)
        if letter is None:
            return None
        r = self.r
        kind = words[-1]
        loop = str(r.randint(1, 999)).zfill(r.choice([1, 3]))
        sep = r.choice(["", "-", "_", ""])
        if kind == "sensor":
            tag = letter + r.choice(["T", "I", "E", "IT", "T"])
            suffix = r.choice(["", "_PV", ".PV", "", "_MEAS", ".IN"])
        elif kind == "setpoint":
            tag = letter + r.choice(["IC", "C", "RC", "IC"])
            suffix = r.choice(["_SP", ".SP", "-SP", "_SETPT", ".SV"])
        elif kind == "alarm":
            hl = (
                "H"
                if {"high", "max", "maximum"} & set(words)
                else "L"
                if {"low", "min", "minimum"} & set(words)
                else r.choice(["H", "L", ""])
            )
            tag = letter + "A" + hl
            suffix = r.choice(["", "_ALM", ".ALM"])
        elif kind == "command":
            tag = letter + r.choice(["V", "CV", "Y", "IC"])
            suffix = r.choice(["_OUT", ".OUT", "_CMD", "_MV", ".CV", ""])
        else:
            return None
        return f"{tag}{sep}{loop}{suffix}"

    def _qualified(self, core: list[str], words: list[str]) -> list[str]:
        """Sometimes prefix a service or place the class does not name, unless that would spell
        another Brick class (``Cooling_`` + ``Temperature_Setpoint`` is a class of its own)."""
        r = self.r
        if SERVICE_WORDS & set(words) and r.random() < 0.3:
            q = r.choice(SERVICE_QUALIFIERS)
        elif r.random() < 0.06:
            q = r.choice(PLACE_QUALIFIERS)
        else:
            return core
        spelled = "_".join(w.capitalize() for w in q.split() + words)
        if spelled.lower() in self.known_names:
            return core
        return q.split() + core

    def _class_words(self, cls: BrickClass) -> list[str]:
        """The class name's words, sometimes those of one of its aliases (``Discharge_*``)."""
        name = cls.name
        alts = self.alias_names.get(name)
        if alts and self.r.random() < 0.3:
            name = self.r.choice(alts)
        return [w.lower() for w in name.split("_")]

    def _point(self, cls: BrickClass) -> tuple[list[str], str | None]:
        """The words for the point itself, or an ISA tag string."""
        r = self.r
        words = self._class_words(cls)
        if len(words) <= 4 and r.random() < 0.25:
            tag = self._isa(words)
            if tag is not None:
                return [], tag
        if r.random() < 0.06:
            return [w for w in words], None  # the class name itself, spelled out
        kind = words[-1] if words[-1] in TYPE_WORDS else ""
        core = words[:-1] if kind else words
        core = self._qualified(core, words)
        if kind == "limit" and len(core) > 1 and core[-1] == "setpoint":
            core = core[:-1]
            kind = "setpoint limit"
        tokens = self._core_tokens(core)
        if kind:
            t = " ".join(self._type_token(k) for k in kind.split()).strip()
            if t:
                if r.random() < 0.1:
                    tokens.insert(0, t)
                else:
                    tokens.append(t)
        if len(tokens) > 2 and r.random() < 0.08:
            r.shuffle(tokens)
        return [t for t in tokens if t], None

    # -- context around it ------------------------------------------------------------------
    def _equipment(self, words: list[str]) -> str:
        r = self.r
        dom = _domain(words) if r.random() < 0.7 else r.choice(list(EQUIPMENT))
        e = r.choice(EQUIPMENT[dom])
        f, n = r.randint(1, 12), r.randint(1, 40)
        pattern = r.choice(
            [
                "{e}{n}",
                "{e}-{n}",
                "{e}_{n}",
                "{e}{f}-{n}",
                "{e}_{f}_{n}",
                "{e}{f}{n:02d}",
                "{e} {n}",
                "{e}.{n}",
                "{e}",
                "{e}{n}{x}",
                "{e}-{f}{n:02d}",
            ]
        )
        return pattern.format(e=e, n=n, f=f, x=r.choice("ABCDEFGH"))

    def _building(self) -> str:
        r = self.r
        letters = "".join(r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(r.randint(2, 5)))
        return r.choice(
            [
                letters,
                f"{letters}{r.randint(1, 20)}",
                f"BLDG{r.randint(1, 60)}",
                f"B{_num(r)}",
                f"{letters}-{r.randint(1, 9)}",
                str(r.randint(100, 999)),
                letters.capitalize(),
            ]
        )

    def _room(self) -> str:
        r = self.r
        n = r.randint(1, 9) * 100 + r.randint(0, 40)
        return r.choice(
            [
                f"RM{n}",
                f"R{n}",
                str(n),
                f"F{n // 100}.R{n}",
                f"B{r.randint(1, 30)}.F{n // 100}.R{n}",
                f"Rm {n}",
                f"{n}{r.choice('ABCD')}",
                f"L{n // 100}",
                f"FL{n // 100}",
                site_code(r),
            ]
        )

    def _case(self, tokens: list[str], sep: str) -> str:
        r = self.r
        style = r.random()
        if style < 0.45:
            tokens = [t.upper() for t in tokens]
        elif style < 0.65:
            tokens = [t.lower() for t in tokens]
        elif style < 0.85:
            tokens = [t[:1].upper() + t[1:].lower() for t in tokens]
            if r.random() < 0.6:
                sep = ""  # CamelCase
        else:
            tokens = [t.upper() if len(t) <= 3 else t.capitalize() for t in tokens]
        return sep.join(tokens)

    def _free_text(self, cls: BrickClass) -> str:
        """Title-case words, as in hand-typed point lists ('Return Air CO2 Sensordac1UIP36')."""
        r = self.r
        words = [w for w in cls.name.split("_")]
        out = []
        for w in words:
            lw = w.lower()
            if lw == "sensor" and r.random() < 0.4:
                continue
            if lw in WORDS and r.random() < 0.25:
                out.append(r.choice(WORDS[lw]).upper() if r.random() < 0.5 else lw.title())
            else:
                out.append(w)
        text = " ".join(out)
        if r.random() < 0.4:
            text = (
                r.choice(["1st", "2nd", "3rd", "4th", "Floor 2", "Main", "North", "East"])
                + (" Floor " if r.random() < 0.5 else " ")
                + text
            )
        if r.random() < 0.5:
            glue = "" if r.random() < 0.6 else r.choice([" ", "-", "_"])
            text += glue + _fill(r.choice(CONTROLLERS), r) + _fill(r.choice(CONTROLLERS), r)
        elif r.random() < 0.4:
            code = site_code(r)
            text = f"{text} {code}" if r.random() < 0.7 else f"{code} {text}"
        return text

    def _descriptive(self, cls: BrickClass) -> str:
        """Words as operators type them ('fcu 3 supply air temp sp', 'Chiller 2 Leaving Water
        Temperature'): synonyms, an equipment or place prefix that does not change the class,
        plurals, the type word dropped or spelled out."""
        r = self.r
        words = self._class_words(cls)
        out: list[str] = []
        for i, w in enumerate(words):
            last = i == len(words) - 1
            if last and w == "sensor" and r.random() < 0.5:
                continue
            if w == "air" and r.random() < 0.2:
                continue
            forms = SYNONYMS.get(w)
            if forms and r.random() < 0.45:
                out.extend(r.choice(forms).split())
            elif w in WORDS and r.random() < 0.15:
                out.append(r.choice(WORDS[w]))
            else:
                out.append(w)
        if out and r.random() < 0.08 and len(out[-1]) > 3 and out[-1][-1] != "s":
            out[-1] += "s"
        prefix: list[str] = []
        if r.random() < 0.6:
            prefix.extend(r.choice(DESC_EQUIPMENT[_domain(words)]).split())
            if r.random() < 0.7:
                n = _num(r)
                if r.random() < 0.5:
                    prefix[-1] += r.choice(["", "-", "_"]) + n
                else:
                    prefix.append(n)
        if r.random() < 0.25:
            prefix = r.choice(DESC_PLACES).replace("#", _num(r)).split() + prefix
        elif r.random() < 0.2:
            prefix = [site_code(r).replace(" ", "")] + prefix
        if prefix and r.random() < 0.15:
            tokens = out + prefix
        else:
            tokens = prefix + out
        if r.random() < 0.08:
            q = _quantity(words)
            if q:
                tokens.append("(" + r.choice(UNITS[q]) + ")")
        style = r.random()
        if style < 0.5:
            tokens = [t.lower() for t in tokens]
        elif style < 0.8:
            tokens = [
                t.upper() if len(t) <= 3 and not t.isalpha() else t.capitalize() for t in tokens
            ]
        elif style < 0.9:
            tokens = [t.upper() for t in tokens]
        sep = r.choice([" ", " ", " ", " ", " ", "_", "-", "."])
        return sep.join(tokens)

    def sample(self, k: int) -> Point:
        cls = self.classes[k]
        r = self.r
        words = [w.lower() for w in cls.name.split("_")]
        if r.random() < 0.12:
            name = self._free_text(cls)
        elif r.random() < 0.17:
            name = self._descriptive(cls)
        else:
            point, tag = self._point(cls)
            sep = r.choice(SEPARATORS)
            core = tag if tag is not None else self._case(point, sep)
            if r.random() < 0.08 and tag is None:
                core = core + r.choice(["", "_"]) + r.choice(UNITS.get(_quantity(words), ["%"]))
            parts: list[str] = []
            if r.random() < 0.35:
                parts.append(self._building())
            if r.random() < 0.15:
                parts.append(_fill(r.choice(CONTROLLERS), r))
            if r.random() < 0.75:
                parts.append(self._equipment(words))
            if r.random() < 0.2:
                parts.append(self._room())
            if parts and r.random() < 0.12:
                parts = [parts[-1]] + parts[:-1]
            outer = r.choice(["_", ".", "-", ":", " ", "/", "", "_", "."])
            if r.random() < 0.85 or not parts:
                name = outer.join(parts + [core])
            else:
                name = outer.join([core] + parts)
            if r.random() < 0.08:
                name += r.choice(ATTRIBUTES)
            if r.random() < 0.2:
                name = name.upper() if r.random() < 0.5 else name.lower()
        return Point(name, *self._extras(cls, words))

    def _extras(self, cls: BrickClass, words: list[str]) -> tuple[str, str, str]:
        r = self.r
        desc = unit = dtype = ""
        if r.random() < 0.2:
            if cls.definition and r.random() < 0.5:
                desc = cls.definition.split(".")[0]
            else:
                desc = " ".join(w for w in words if r.random() < 0.85).title()
        q = _quantity(words)
        if q and r.random() < 0.25:
            unit = r.choice(UNITS[q])
        if r.random() < 0.25:
            binary = words[-1] in {"status", "alarm"} or (
                words[-1] == "command" and not {"position", "speed", "frequency"} & set(words)
            )
            dtype = r.choice(BINARY_TYPES if binary else ANALOG_TYPES)
        return desc, unit, dtype

    def stream(
        self, n: int, only: Sequence[int] = (), *, prior: float = 0.0
    ) -> Iterator[tuple[Point, int]]:
        """``n`` samples, classes drawn uniformly (from ``only`` when given: tiny corpora), or with
        probability ``prior`` by how common the class is in buildings (`prior.class_weights`)."""
        if prior and self._cum is None:
            self._cum = list(accumulate(class_weights(self.classes)))
        for _ in range(n):
            if only:
                k = self.r.choice(only)
            elif prior and self.r.random() < prior:
                assert self._cum is not None
                k = bisect(self._cum, self.r.random() * self._cum[-1])
            else:
                k = self.r.randrange(len(self.classes))
            yield self.sample(k), k


def _quantity(words: list[str]) -> str:
    for w in words:
        if w in UNITS:
            return w
    return ""
