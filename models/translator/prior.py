"""How often each Brick point class turns up in a building, roughly, from general HVAC knowledge.

A uniform draw over the 793 classes tells the model that `Air_Temperature_Integral_Time_Parameter`
is as likely as `Zone_Air_Temperature_Sensor`; real point lists are mostly temperature sensors and
setpoints, valve/damper and fan commands, run and on/off statuses and meter readings, and PID
parameters or setpoint limits are rare. The weights below say that from the class's own words and
place in the Brick hierarchy (never from any labeled building), and the corpus draws classes with
them (mixed with a uniform draw so every class is still trained).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.translator.vocab import BrickClass

# By the point type (the last word, or the last two for setpoint limits).
KIND = {
    "sensor": 1.6,
    "setpoint": 1.3,
    "command": 1.3,
    "status": 1.3,
    "alarm": 0.8,
    "parameter": 0.35,
    "limit": 0.4,
}
# Quantities and devices every HVAC/lighting/metering point list is full of.
COMMON_WORDS = {
    "temperature": 2.0,
    "valve": 1.5,
    "damper": 1.5,
    "position": 1.3,
    "fan": 1.4,
    "speed": 1.2,
    "run": 1.4,
    "on": 1.4,
    "start": 1.3,
    "power": 1.4,
    "energy": 1.4,
    "current": 1.2,
    "voltage": 1.2,
    "humidity": 1.3,
    "pressure": 1.2,
    "flow": 1.2,
    "dioxide": 1.3,
    "occupancy": 1.3,
    "lighting": 1.2,
    "luminance": 1.2,
    "mode": 1.1,
}
# Control-loop tuning and rare refinements.
RARE_WORDS = {
    "integral",
    "proportional",
    "derivative",
    "gain",
    "step",
    "delay",
    "sensitivity",
    "acceleration",
    "deceleration",
    "grains",
    "deadband",
    "band",
    "reset",
    "differential",
    "average",
    "min",
    "max",
    "minimum",
    "maximum",
    "ammonia",
    "frost",
    "load",
    "shed",
    "velocity",
    "enthalpy",
    "lockout",
    "duration",
    "count",
    "hail",
    "rain",
    "wind",
    "solar",
    "radiance",
    "direction",
    "methane",
    "ozone",
    "radon",
    "formaldehyde",
    "particulate",
}
# Points nearly every air- or water-side system exposes.
STAPLES = {
    "Supply_Air_Temperature_Sensor",
    "Return_Air_Temperature_Sensor",
    "Mixed_Air_Temperature_Sensor",
    "Outside_Air_Temperature_Sensor",
    "Zone_Air_Temperature_Sensor",
    "Supply_Air_Temperature_Setpoint",
    "Cooling_Temperature_Setpoint",
    "Heating_Temperature_Setpoint",
    "Valve_Position_Command",
    "Damper_Position_Command",
    "Fan_Status",
    "Fan_On_Off_Status",
    "Run_Status",
    "On_Off_Command",
    "Start_Stop_Command",
    "Speed_Command",
    "Fan_Speed_Command",
    "Electric_Power_Sensor",
    "Active_Power_Sensor",
    "Energy_Sensor",
    "Electric_Energy_Sensor",
    "Current_Sensor",
    "Voltage_Sensor",
    "Zone_Air_Humidity_Sensor",
    "Relative_Humidity_Sensor",
    "CO2_Sensor",
    "Occupancy_Sensor",
    "Occupancy_Status",
    "Supply_Air_Flow_Sensor",
    "Supply_Air_Static_Pressure_Sensor",
    "Supply_Air_Static_Pressure_Setpoint",
    "Leaving_Chilled_Water_Temperature_Sensor",
    "Entering_Chilled_Water_Temperature_Sensor",
    "Leaving_Hot_Water_Temperature_Sensor",
    "Entering_Hot_Water_Temperature_Sensor",
    "Luminance_Sensor",
    "Luminance_Command",
    "Lighting_Level_Command",
    "Alarm",
    "Filter_Status",
    "Temperature_Setpoint",
    "Air_Temperature_Setpoint",
    "Zone_CO2_Level_Sensor",
}


def class_weights(classes: Sequence[BrickClass]) -> list[float]:
    """One sampling weight per class, mean 1, in about a 1:30 range."""
    out = []
    for c in classes:
        words = [w.lower() for w in c.name.split("_")]
        w = KIND.get(words[-1], 1.0)
        if words[-1] == "limit" and len(words) > 1 and words[-2] == "setpoint":
            w = KIND["limit"]
        for word in set(words):
            w *= COMMON_WORDS.get(word, 1.0)
            if word in RARE_WORDS:
                w *= 0.6
        w *= 0.85 ** max(0, len(words) - 4)  # long names are narrow refinements
        if c.name in STAPLES:
            w *= 2.5
        out.append(min(8.0, max(0.25, w)))
    mean = sum(out) / len(out)
    return [w / mean for w in out]
