"""The sortbox daemon: watch → queue → decode → classify → decide → place → journal."""
