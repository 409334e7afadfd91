"""Firmware updates and file transfers for OCPP Firmware Management: URL checks
(`urls`), bounded downloads and uploads (`transfer`), the update's state machine (`update`)
and the installer step (`installer`). Nothing here knows the wire."""
