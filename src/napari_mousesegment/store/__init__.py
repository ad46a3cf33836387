"""Named models: built-in, user and published ones, their versions, import and export.

Built on :mod:`..models.folder`: every model is a folder whose weights' sha256 is checked on load.
Looking a name up (:func:`.registry.resolve`) needs no torch; loading the network does.
"""
