from nixos_test_ng._native import Logger as Logger

AbstractLogger = Logger
