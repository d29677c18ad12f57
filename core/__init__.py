"""What every part of the service needs: settings and small shared primitives."""
