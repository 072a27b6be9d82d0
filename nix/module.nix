# NixOS module: services.offload installs offload, makes offload-hook the nix-daemon's build hook
# (so nixos-rebuild, nix build and every client of the daemon get offload's choices), sets
# nix.buildMachines and gives the hook a state directory. Not evaluated against nixpkgs in CI
# (there is none there): tests/integration/test_packaging_nix.py parses it and evaluates it
# against a stub of the module system.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  cfg = config.services.offload;
  hook = "${cfg.package}/bin/offload-hook";
  nixVersion = config.nix.package.version;
  # Nix 2.25-2.33 ignore a build-hook set in nix.conf (nix#15083); NIX_CONFIG still works there.
  hookIgnoredInNixConf =
    lib.versionAtLeast nixVersion "2.25" && !(lib.versionAtLeast nixVersion "2.34");
  toml = pkgs.formats.toml { };
in
{
  options.services.offload = {
    enable = lib.mkEnableOption "offload, whole-graph scheduling of Nix's distributed builds";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.offload or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.offload";
      description = "The offload package.";
    };

    hook = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Make offload-hook the nix-daemon's build-hook, in place of Nix's own build-remote.
        Without it, offload is used only by `offload build`.
      '';
    };

    buildMachines = lib.mkOption {
      type = options.nix.buildMachines.type;
      default = [ ];
      description = ''
        The builders, as in nix.buildMachines (which this sets): offload reads the same
        /etc/nix/machines that Nix does. `offload setup client HOST` prints these entries.
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.path;
      default = "/var/lib/offload";
      description = ''
        The hook's state under the daemon: history, backoff, slot files, logs and the
        coordinator's socket. Read it as root with OFFLOAD_STATE_DIR set to this path
        (for example `sudo OFFLOAD_STATE_DIR=/var/lib/offload offload status`).
      '';
    };

    settings = lib.mkOption {
      type = toml.type;
      default = { };
      example = lib.literalExpression ''{ local = { speed = 2; }; }'';
      description = "offload.toml, written to /etc/offload/offload.toml when not empty.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];

    nix.distributedBuilds = lib.mkDefault (cfg.buildMachines != [ ] || cfg.hook);
    nix.buildMachines = cfg.buildMachines;
    nix.settings.build-hook = lib.mkIf cfg.hook hook;

    systemd.services.nix-daemon.environment = {
      OFFLOAD_STATE_DIR = toString cfg.stateDir;
    }
    // lib.optionalAttrs (cfg.hook && hookIgnoredInNixConf) { NIX_CONFIG = "build-hook = ${hook}"; };

    systemd.tmpfiles.rules = [ "d ${toString cfg.stateDir} 0700 root root -" ];

    environment.etc."offload/offload.toml" = lib.mkIf (cfg.settings != { }) {
      source = toml.generate "offload.toml" cfg.settings;
    };
  };
}
