from nixos_test_ng.driver import Driver as Driver
