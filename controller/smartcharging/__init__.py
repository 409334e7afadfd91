"""Smart charging without the wire: charging profiles, their validity, composite schedules
(pure), and the runner that hands the charger the limit in force and wakes at the next
change."""
