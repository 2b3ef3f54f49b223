"""The directory behind the LDAP scenarios: a real slapd started by the benchmark.

`Directory` runs OpenLDAP's slapd (tests.support.servers.SlapdServer: mdb, on loopback,
equality indexes on objectClass, uid, mail and entryUUID, as a site would index them),
with a read-only service account under `ou=services` and the bench users under
`ou=people` (inetOrgPerson, {SSHA} passwords, an employeeNumber as the numeric id).
`env()` is the group's LDAP configuration as an administrator would write it for
`make run`: the service account bind, subjects from entryUUID (the default `make run`
and compose give new deployments), kc.uuid from entryUUID, konnect/id from
employeeNumber.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.support.servers import SlapdServer

SERVICE_UID = "konnect"


class Directory:
    def __init__(self, directory: Path) -> None:
        self.server = SlapdServer(Path(directory))
        self.service_password = secrets.token_urlsafe(18)
        self.service_dn = ""
        self.users: list[str] = []
        self.password = ""

    @property
    def pid(self) -> int:
        return self.server.pid

    def start(self) -> None:
        self.server.start()
        services = self.server.add_ou("services")
        self.service_dn = self.server.add_user(services, SERVICE_UID, self.service_password,
                                               "Konnect", "Service")

    def stop(self) -> None:
        self.server.close()

    def add_users(self, names: list[str], password: str) -> None:
        """People who can sign in (uid = name), each with a numeric id."""
        for i, name in enumerate(names):
            if name not in self.users:
                self.server.add_user(self.server.people_dn, name, password, "Bench",
                                     f"User {i}", extra_attrs={"employeeNumber": str(60000 + i)})
                self.users.append(name)
        self.password = password

    def env(self) -> dict:
        return {"KONNECTD_IDENTITY_MANAGER": "ldap", "LDAP_URI": self.server.url,
                "LDAP_BINDDN": self.service_dn, "LDAP_BINDPW": self.service_password,
                "LDAP_BASEDN": self.server.people_dn, "LDAP_SUB_ATTRIBUTES": "entryUUID",
                "LDAP_UUID_ATTRIBUTE": "entryUUID", "LDAP_UIDNUMBER_ATTRIBUTE": "employeeNumber"}
