"""Smart charging without the wire: charging profiles, their validity, composite schedules
(pure), and the runner that hands the charger the limit in force and wakes at the next
change.

The pure part (`model`, `profileset`, `composite`) has no I/O and no clock (every instant is
an argument) and imports nothing of `ocpp16` or `hal`: the OCPP layer translates
SetChargingProfile / ClearChargingProfile / GetCompositeSchedule to and from its types.
"""
