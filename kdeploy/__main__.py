from kdeploy.cli import entry_point

entry_point()
