"""The watch daemon: inotify on the live dir, its state file, sd_notify."""
